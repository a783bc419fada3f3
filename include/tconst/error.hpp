#pragma once
#include <stdexcept>
#include <string>

namespace tconst {

/// Everything a user can cause (bad file, bad id, bad flag) is reported as this, with a message in
/// words. Internal invariants are assertions, never this.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace tconst
