#pragma once

#define TCONST_VERSION_MAJOR 0
#define TCONST_VERSION_MINOR 1
#define TCONST_VERSION_PATCH 0

namespace tconst {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace tconst
