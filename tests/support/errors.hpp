// Checking the errors the library throws.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <string>
#include <vector>

#include "tconst/error.hpp"

namespace tconst_test {

/// Runs fn, which must throw tconst::Error whose message contains every one of `parts`; anything
/// else (no exception, another exception, a part missing) is a test failure.
template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const tconst::Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-tconst::Error exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected a tconst::Error mentioning \"" << parts.front() << "\"";
}

}  // namespace tconst_test
