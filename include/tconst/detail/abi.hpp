#pragma once
// The build configuration a unit compiles the library for, and the inline namespace that names it.
//
// Some of the library's code differs with the unit's flags: OpenMP (_OPENMP) splits work over
// threads, and the x86 kernels are compiled unless TCONST_NO_DISPATCH is defined or the compiler
// cannot target them. Everything in tconst (but Error and version.hpp)
// lives in an inline namespace named for that configuration and for whether the unit uses the
// precompiled library (tconst::precompiled), so that units compiled differently never share a
// symbol: a program may mix them, and each unit runs the code it was compiled for.
//
// tconst::precompiled defines TCONST_PRECOMPILED, with the library's own configuration in
// TCONST_PRECOMPILED_OPENMP and TCONST_PRECOMPILED_DISPATCH (0 or 1). A unit whose configuration
// matches uses the library's instantiations and kernels (TCONST_USE_PRECOMPILED); any other unit
// compiles the headers itself, as without the library.

#if !defined(TCONST_NO_DISPATCH) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define TCONST_X86_DISPATCH 1
#define TCONST_ABI_ISA x86
#else
#define TCONST_X86_DISPATCH 0
#define TCONST_ABI_ISA portable
#endif

#ifdef _OPENMP
#define TCONST_UNIT_OPENMP 1
#define TCONST_ABI_THREADS omp
#else
#define TCONST_UNIT_OPENMP 0
#define TCONST_ABI_THREADS seq
#endif

#if defined(TCONST_PRECOMPILED) && defined(TCONST_PRECOMPILED_OPENMP) &&                       \
    defined(TCONST_PRECOMPILED_DISPATCH) && TCONST_PRECOMPILED_OPENMP == TCONST_UNIT_OPENMP && \
    TCONST_PRECOMPILED_DISPATCH == TCONST_X86_DISPATCH
#define TCONST_USE_PRECOMPILED 1
#define TCONST_ABI_LINK pc
#else
#define TCONST_USE_PRECOMPILED 0
#define TCONST_ABI_LINK ho
#endif

// TCONST_BUILDING_PRECOMPILED: set by the library's own units (src/).
#ifndef TCONST_BUILDING_PRECOMPILED
#define TCONST_BUILDING_PRECOMPILED 0
#endif
/// Whether this unit compiles the definitions that tconst::precompiled holds (header-only, or the
/// library's own units); a precompiled unit sees declarations only.
#define TCONST_DEFINITIONS (!TCONST_USE_PRECOMPILED || TCONST_BUILDING_PRECOMPILED)
/// Whether this unit defines the library's non-template functions that a precompiled unit sees
/// declared only (TCONST_FUNCTION): inline in a header-only unit; in the library, once, in the
/// unit that defines TCONST_FUNCTION_UNIT (src/functions.cpp).
#if !TCONST_USE_PRECOMPILED
#define TCONST_DEFINE_FUNCTIONS 1
#define TCONST_FUNCTION inline
#elif defined(TCONST_FUNCTION_UNIT)
#define TCONST_DEFINE_FUNCTIONS 1
#define TCONST_FUNCTION
#else
#define TCONST_DEFINE_FUNCTIONS 0
#define TCONST_FUNCTION
#endif
/// Whether this unit declares the library's float and double instantiations extern.
#define TCONST_EXTERN_TEMPLATES TCONST_USE_PRECOMPILED
/// Whether this unit compiles the vector kernels itself (header-only, or the library's kernel
/// units).
#if !TCONST_USE_PRECOMPILED || defined(TCONST_KERNEL_UNIT)
#define TCONST_KERNELS_HERE 1
#else
#define TCONST_KERNELS_HERE 0
#endif

#define TCONST_ABI_JOIN3(a, b, c) abi_##a##_##b##_##c
#define TCONST_ABI_NAME(a, b, c) TCONST_ABI_JOIN3(a, b, c)
/// The inline namespace, e.g. abi_ho_omp_x86 (header-only, OpenMP, x86 kernels).
#define TCONST_ABI TCONST_ABI_NAME(TCONST_ABI_LINK, TCONST_ABI_THREADS, TCONST_ABI_ISA)
