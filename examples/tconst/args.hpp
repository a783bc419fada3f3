#pragma once
// Flag parsing for the tconst program: `--name value` and `--switch`, each command declaring the
// flags it takes, so that an unknown or malformed flag is an error that names it.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tconst/error.hpp"

namespace tconst_cli {

/// A mistake on the command line (exit status 2).
class UsageError : public tconst::Error {
 public:
  using tconst::Error::Error;
};

/// One flag a command takes: what the parser accepts and what --help shows.
struct Flag {
  std::string name;   // without the leading "--"
  std::string value;  // its value's placeholder ("N", "FILE"); empty for a switch
  std::string help;   // what it does, and its default
};

/// The --help text of a command: `synopsis` (its usage lines), then one entry per flag, then
/// `notes` (may be empty).
std::string usage_text(const std::string& synopsis, const std::vector<Flag>& flags,
                       const std::string& notes = "");

/// Whether --help or -h stands among argv[0, argc) as a flag (not as another flag's value).
bool asks_for_help(int argc, char** argv, const std::vector<Flag>& flags);

class Args {
 public:
  /// `valued`: flags that take a value; `switches`: flags that do not. Repeatable valued flags
  /// (such as --stop) keep every value.
  Args(const std::string& command, int argc, char** argv, const std::set<std::string>& valued,
       const std::set<std::string>& switches);
  /// The same with the flags as --help lists them.
  Args(const std::string& command, int argc, char** argv, const std::vector<Flag>& flags);

  bool has(const std::string& name) const { return values_.count(name) || switches_.count(name); }
  bool flag(const std::string& name) const { return switches_.count(name) > 0; }

  /// The last value given for `name`, or `fallback`.
  std::string str(const std::string& name, const std::string& fallback = "") const;
  /// The last value given for `name`; a UsageError when there is none.
  std::string required(const std::string& name) const;
  /// Every value given for `name`, in order.
  std::vector<std::string> all(const std::string& name) const;

  /// The value as an integer in [lo, hi], or `fallback` when the flag is absent.
  int64_t integer(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const;
  /// The value as a number in [lo, hi], or `fallback` when the flag is absent.
  double number(const std::string& name, double fallback, double lo, double hi) const;
  /// Comma-separated non-negative integers (the value, or `fallback` when the flag is absent).
  std::vector<int64_t> integer_list(const std::string& name, const std::string& fallback) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> switches_;
};

}  // namespace tconst_cli
