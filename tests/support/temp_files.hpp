// Paths for the files a test writes. ctest runs every test in its own process and runs several at
// once (the same test program too, under each TCONST_ISA), so a name carries the process id, the
// running test's suite and name, and the caller's tag: no two tests or processes share a file.
// Everything lives in one directory per process, under one per user, removed when the program ends.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tconst_test {
namespace detail {

/// Owns this process's directory of test files: made empty at first use, removed at exit.
class ProcessTempDir {
 public:
  ProcessTempDir()
      : owner_(::getpid()),
        path_(::testing::TempDir() + "tconst_tests_" + std::to_string(::getuid()) + "/" +
              std::to_string(owner_) + "/") {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);  // a dead process's, with the same id
    std::filesystem::create_directories(path_);
  }
  ~ProcessTempDir() {
    if (::getpid() != owner_) return;  // a forked child leaves its parent's files alone
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ProcessTempDir(const ProcessTempDir&) = delete;
  ProcessTempDir& operator=(const ProcessTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  pid_t owner_;
  std::string path_;
};

}  // namespace detail

/// This process's directory for test files, ending in '/'; it and its files go when the program
/// ends.
inline const std::string& process_temp_dir() {
  static const detail::ProcessTempDir dir;
  return dir.path();
}

/// "Suite_Name" of the running test, '/' written '_' ("no_test" outside a test).
inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name =
      info == nullptr ? "no_test" : std::string(info->test_suite_name()) + "_" + info->name();
  for (char& c : name) c = c == '/' ? '_' : c;
  return name;
}

/// A path no other test or process uses: this process's directory, the running test's name, then
/// `tag` verbatim (so temp_path(t) + ".x" == temp_path(t + ".x")).
inline std::string temp_path(const std::string& tag) {
  return process_temp_dir() + current_test_name() + "_" + tag;
}

/// Writes `content` to `path`, replacing any file there; throws std::runtime_error on failure.
inline void write_file(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

/// A fresh, empty directory at temp_path(tag), removed with everything in it when the guard dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) : path_(temp_path(tag)) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// The directory, without a trailing '/'.
  const std::string& path() const { return path_; }
  /// Writes `content` to the file `name` in the directory and returns the file's path.
  std::string write(const std::string& name, std::string_view content) const {
    const std::string file = path_ + "/" + name;
    write_file(file, content);
    return file;
  }

 private:
  std::string path_;
};

}  // namespace tconst_test
