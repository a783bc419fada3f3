#include "args.hpp"

#include <cerrno>
#include <cstdlib>

namespace tconst_cli {

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
