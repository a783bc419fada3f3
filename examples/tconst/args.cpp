#include "args.hpp"

#include <cerrno>
#include <cstdlib>

namespace tconst_cli {
namespace {

std::set<std::string> names_of(const std::vector<Flag>& flags, bool valued) {
  std::set<std::string> out;
  for (const Flag& f : flags) {
    if (f.value.empty() != valued) out.insert(f.name);
  }
  return out;
}

}  // namespace

std::string usage_text(const std::string& synopsis, const std::vector<Flag>& flags,
                       const std::string& notes) {
  std::string out = synopsis + "\nflags:\n";
  for (const Flag& f : flags) {
    std::string head = "  --" + f.name + (f.value.empty() ? "" : " " + f.value);
    // Meanings start in one column; a long flag puts its meaning on the next line.
    const size_t column = 26;
    head += head.size() + 2 <= column ? std::string(column - head.size(), ' ')
                                      : "\n" + std::string(column, ' ');
    // Continuation lines of a meaning (after '\n' in `help`) are indented to the same column.
    std::string help;
    for (char ch : f.help) {
      help += ch;
      if (ch == '\n') help += std::string(column, ' ');
    }
    out += head + help + "\n";
  }
  out += "  -h, --help              this text\n";
  if (!notes.empty()) out += notes;
  return out;
}

bool asks_for_help(int argc, char** argv, const std::vector<Flag>& flags) {
  const std::set<std::string> valued = names_of(flags, true);
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return true;
    // A valued flag without "=" takes the next argument as its value, whatever it reads.
    if (a.size() > 2 && a.compare(0, 2, "--") == 0 && a.find('=') == std::string::npos &&
        valued.count(a.substr(2))) {
      ++i;
    }
  }
  return false;
}

Args::Args(const std::string& command, int argc, char** argv, const std::vector<Flag>& flags)
    : Args(command, argc, argv, names_of(flags, true), names_of(flags, false)) {}

Args::Args(const std::string& command, int argc, char** argv, const std::set<std::string>& valued,
           const std::set<std::string>& switches) {
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.size() < 3 || a.compare(0, 2, "--") != 0) {
      throw UsageError("unexpected argument '" + a + "' for '" + command + "'");
    }
    std::string name = a.substr(2), value;
    bool has_inline = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline = true;
    }
    if (valued.count(name)) {
      if (!has_inline) {
        if (i + 1 >= argc) throw UsageError("flag --" + name + " needs a value");
        value = argv[++i];
      }
      values_[name].push_back(value);
    } else if (switches.count(name)) {
      if (has_inline) throw UsageError("flag --" + name + " takes no value");
      switches_.insert(name);
    } else {
      throw UsageError("unknown flag --" + name + " for '" + command + "'");
    }
  }
}

std::string Args::str(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::string Args::required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw UsageError("missing required flag --" + name);
  return it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int64_t Args::integer(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const {
  if (!values_.count(name)) return fallback;
  const std::string s = str(name);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
    throw UsageError("flag --" + name + " needs an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + s + "'");
  }
  return v;
}

double Args::number(const std::string& name, double fallback, double lo, double hi) const {
  if (!values_.count(name)) return fallback;
  const std::string s = str(name);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !(v >= lo && v <= hi)) {
    throw UsageError("flag --" + name + " needs a number in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + s + "'");
  }
  return v;
}

std::vector<int64_t> Args::integer_list(const std::string& name,
                                        const std::string& fallback) const {
  const std::string s = str(name, fallback);
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string item =
        s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno == ERANGE || v < 0) {
      throw UsageError("flag --" + name + " needs comma-separated non-negative integers, got '" +
                       s + "'");
    }
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace tconst_cli
