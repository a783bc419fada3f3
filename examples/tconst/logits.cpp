// tconst logits (SPEC §7): the ids fed one at a time through a streaming session; after each, the
// V logits appended to --out as little-endian float32.

#include <fstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

template <typename Scalar>
int logits(const Args& args) {
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  const auto ids = tconst::read_ids_file(args.required("ids"), model->config().vocab_size);
  const std::string out_path = args.required("out");
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) throw tconst::Error("cannot open '" + out_path + "' for writing");
  auto session = tconst::make_session(model, session_options(args));
  std::vector<float> row(static_cast<size_t>(model->config().vocab_size));
  for (int32_t id : ids) {
    const auto& logits = session->feed(id);
    for (size_t i = 0; i < row.size(); ++i) row[i] = static_cast<float>(logits[(Eigen::Index)i]);
    // The file format is little-endian float32; this program targets little-endian hosts.
    out.write(reinterpret_cast<const char*>(row.data()),
              static_cast<std::streamsize>(row.size() * sizeof(float)));
  }
  out.flush();
  if (!out) throw tconst::Error("failed writing '" + out_path + "'");
  return 0;
}

}  // namespace

int cmd_logits(const Args& args) {
  return with_precision(args, [&](auto s) { return logits<decltype(s)>(args); });
}

}  // namespace tconst_cli
