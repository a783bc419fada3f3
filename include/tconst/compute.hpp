#pragma once
// Compute: the arithmetic of a session's weight products (SPEC §6.3). f32 is the exact reference
// and the default; bf16 and int8 run the products on the CPU's 16-bit and 8-bit dot instructions.

#include <cstdint>
#include <string>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// How a session's weight products take their inputs (SPEC §6.3).
enum class Compute : uint8_t {
  f32,   ///< float32 activations and weights as the file stores them (the reference)
  bf16,  ///< activations rounded to BF16, weights held in BF16, float32 accumulation
  int8,  ///< activations quantized per block to int8, weights in Q8, int32 block sums
};

inline const char* to_string(Compute c) {
  switch (c) {
    case Compute::f32:
      return "f32";
    case Compute::bf16:
      return "bf16";
    case Compute::int8:
      return "int8";
  }
  return "?";
}

/// The Compute named `name` (f32, bf16 or int8); throws Error naming it otherwise.
inline Compute parse_compute(const std::string& name) {
  if (name == "f32") return Compute::f32;
  if (name == "bf16") return Compute::bf16;
  if (name == "int8") return Compute::int8;
  throw Error("unknown compute '" + name + "' (expected f32, bf16 or int8)");
}

}  // namespace TCONST_ABI
}  // namespace tconst
