// The yardstick of scripts/compile-time: a unit that uses the library's own dependencies once
// each (an Eigen product of two 64x64 matrices, a small JSON parse).
#include <Eigen/Dense>
#include <cstdio>
#include <nlohmann/json.hpp>

int main() {
  const Eigen::MatrixXf a = Eigen::MatrixXf::Random(64, 64), b = Eigen::MatrixXf::Random(64, 64);
  const Eigen::MatrixXf c = a * b;
  const auto j = nlohmann::json::parse(R"({"a": 1, "b": [1, 2, 3], "c": {"d": "e"}})");
  std::printf("%f %d\n", static_cast<double>(c.sum()), j["a"].get<int>());
  return 0;
}
