// tconst quantize: a model file re-written with its weight matrices in BF16 or Q8 (SPEC §6.1).

#include "tconst/model/quantize.hpp"

#include <sys/stat.h>

#include <cstdio>
#include <string>

#include "commands.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

/// Whether `a` and `b` name the same existing file (the same device and inode).
bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace

int cmd_quantize(const Args& args) {
  const std::string in = args.required("in"), out = args.required("out");
  const std::string type = args.required("type");
  tconst::QuantizeOptions o;
  if (type == "bf16") {
    o.format = tconst::WeightFormat::bf16;
  } else if (type == "q8") {
    o.format = tconst::WeightFormat::q8;
  } else {
    throw UsageError("--type must be bf16 or q8, got '" + type + "'");
  }
  if (args.has("block") && o.format != tconst::WeightFormat::q8) {
    throw UsageError("--block is for --type q8 only");
  }
  o.block = args.integer("block", o.block, 16, 256);
  if ((o.block & (o.block - 1)) != 0) {
    throw UsageError("--block must be a power of two from 16 to 256, got " +
                     std::to_string(o.block));
  }
  for (const std::string& name : args.all("keep")) o.keep.insert(name);
  if (in == out || same_file(in, out)) {
    throw UsageError("--out must not be the input file '" + in + "'");
  }
  const tconst::SafetensorsFile file = tconst::SafetensorsFile::open(in);
  const std::vector<uint8_t> bytes = tconst::quantize_model(file, o);
  // What is written loads: checked before the file appears.
  tconst::Model<float>::from_file(tconst::SafetensorsFile::from_bytes(bytes, out));
  tconst::write_file_atomically(out, bytes);
  std::printf("wrote %s (%zu bytes, %s weights)\n", out.c_str(), bytes.size(), type.c_str());
  return 0;
}

}  // namespace tconst_cli
