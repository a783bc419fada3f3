#pragma once
// A safetensors file (8-byte little-endian header length, JSON header, raw little-endian data),
// memory-mapped read-only and validated as a whole before anything is handed out: every tensor's
// range lies inside the data section, no two ranges overlap, and each range's length equals its
// shape times its element size. A TensorInfo therefore always describes readable bytes.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define TCONST_HAVE_MMAP 1
#else
#include <fstream>
#define TCONST_HAVE_MMAP 0
#endif

namespace tconst {
inline namespace TCONST_ABI {

/// The dtypes a model file's tensors may have (SPEC §6, §6.1: I8 for Q8 matrices; U8 for byte
/// tensors other parts of a file may hold); every other safetensors dtype is kOther.
enum class DType { kF64, kF32, kF16, kBF16, kI8, kU8, kOther };

inline const char* to_string(DType t) {
  switch (t) {
    case DType::kF64:
      return "F64";
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kOther:
      return "other";
  }
  return "?";
}

struct TensorInfo {
  std::string name;
  std::string dtype_name;  // as written in the file
  DType dtype = DType::kOther;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  const uint8_t* data = nullptr;  // inside the mapping; not aligned in general
  uint64_t nbytes = 0;
};

namespace detail {

// Bytes of the whole file, either memory-mapped or (where mmap is unavailable, or for in-memory
// models) owned.
class FileBytes {
 public:
  FileBytes() = default;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() {
#if TCONST_HAVE_MMAP
    if (mapped_ != nullptr) ::munmap(mapped_, size_);
#endif
  }

  static std::shared_ptr<const FileBytes> map(const std::string& path) {
    auto f = std::shared_ptr<FileBytes>(new FileBytes());
#if TCONST_HAVE_MMAP
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot open model file '" + path + "': " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      throw Error("cannot stat model file '" + path + "': " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error("model path '" + path + "' is not a regular file");
    }
    f->size_ = static_cast<size_t>(st.st_size);
    if (f->size_ > 0) {
      void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw Error("cannot map model file '" + path + "': " + std::strerror(e));
      }
      f->mapped_ = p;
      f->bytes_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
#else
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open model file '" + path + "'");
    std::vector<uint8_t> all((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
    f->keep(all);
#endif
    return f;
  }

  /// A copy of `data` in memory of its own (BigBuffer: huge pages where the system gives them).
  static std::shared_ptr<const FileBytes> own(std::vector<uint8_t> data) {
    auto f = std::shared_ptr<FileBytes>(new FileBytes());
    f->keep(data);
    return f;
  }

  const uint8_t* data() const {
    return bytes_;
  }
  size_t size() const {
    return size_;
  }

 private:
  // Copies `data` (then frees it) to where the data section after the header starts on a
  // 64-byte boundary, so that tensors whose offsets are multiples of 64 (every tensor of a file
  // of whole 16-float rows) begin on a cache line: a vector load then never straddles two lines.
  void keep(std::vector<uint8_t>& data) {
    constexpr size_t kLine = 64;
    size_t shift = 0;
    if (data.size() >= 8) {
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | data[static_cast<size_t>(i)];
      if (n <= data.size() - 8) shift = (kLine - (8 + n) % kLine) % kLine;
    }
    owned_ = BigBuffer<uint8_t>(data.size() + shift, "the model's bytes");
    if (!data.empty()) std::memcpy(owned_.data() + shift, data.data(), data.size());
    bytes_ = owned_.data() + shift;
    size_ = data.size();
    std::vector<uint8_t>().swap(data);
  }

  void* mapped_ = nullptr;
  BigBuffer<uint8_t> owned_;
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;
};

inline int64_t dtype_size(const std::string& name, DType* kind) {
  struct Entry {
    const char* name;
    int64_t size;
    DType kind;
  };
  static const Entry kTable[] = {
      {"F64", 8, DType::kF64},    {"F32", 4, DType::kF32},       {"F16", 2, DType::kF16},
      {"BF16", 2, DType::kBF16},  {"I64", 8, DType::kOther},     {"I32", 4, DType::kOther},
      {"I16", 2, DType::kOther},  {"I8", 1, DType::kI8},         {"U64", 8, DType::kOther},
      {"U32", 4, DType::kOther},  {"U16", 2, DType::kOther},     {"U8", 1, DType::kU8},
      {"BOOL", 1, DType::kOther}, {"F8_E4M3", 1, DType::kOther}, {"F8_E5M2", 1, DType::kOther},
  };
  for (const Entry& e : kTable) {
    if (name == e.name) {
      *kind = e.kind;
      return e.size;
    }
  }
  return 0;
}

}  // namespace detail

/// A validated safetensors file. Cheap to copy (the bytes are shared).
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path) {
    return SafetensorsFile(detail::FileBytes::map(path), path);
  }
  static SafetensorsFile from_bytes(std::vector<uint8_t> bytes, const std::string& label) {
    return SafetensorsFile(detail::FileBytes::own(std::move(bytes)), label);
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  const std::string& label() const { return label_; }
  /// Keeps the bytes alive for views into them.
  const std::shared_ptr<const detail::FileBytes>& bytes() const { return bytes_; }

 private:
  SafetensorsFile(std::shared_ptr<const detail::FileBytes> bytes, std::string label)
      : bytes_(std::move(bytes)), label_(std::move(label)) {
    parse();
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("invalid model file '" + label_ + "': " + what);
  }

  // A tensor's byte range in the data section, for the overlap check.
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };

  void parse() {
    const size_t size = bytes_->size();
    const uint8_t* p = bytes_->data();
    if (size < 8)
      fail("truncated: " + std::to_string(size) + " bytes, no room for the header length");
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | p[i];
    if (header_len > size - 8) {
      fail("truncated: header length " + std::to_string(header_len) + " exceeds the " +
           std::to_string(size - 8) + " bytes after it");
    }
    const char* text = reinterpret_cast<const char*>(p + 8);
    // nlohmann::json stops at a NUL byte as if the input ended there; JSON allows none anywhere.
    if (std::memchr(text, 0, header_len) != nullptr) fail("malformed JSON header (NUL byte)");
    nlohmann::json header = nlohmann::json::parse(text, text + header_len, nullptr, false);
    if (header.is_discarded()) fail("malformed JSON header");
    if (!header.is_object()) fail("JSON header is not an object");
    const uint8_t* data = p + 8 + header_len;
    const uint64_t data_size = size - 8 - header_len;
    std::vector<Range> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        read_metadata(it.value());
        continue;
      }
      TensorInfo t = read_tensor(it.key(), it.value(), data, data_size);
      const uint64_t begin = static_cast<uint64_t>(t.data - data), end = begin + t.nbytes;
      auto [pos, inserted] = tensors_.emplace(it.key(), std::move(t));
      // An empty range holds no bytes, so it overlaps nothing (and would sort ambiguously).
      if (end > begin) ranges.push_back({begin, end, &pos->first});
    }
    check_overlaps(ranges);
  }

  void read_metadata(const nlohmann::json& v) {
    if (!v.is_object()) fail("__metadata__ is not an object");
    for (auto m = v.begin(); m != v.end(); ++m) {
      if (!m.value().is_string()) fail("__metadata__ value of '" + m.key() + "' is not a string");
      metadata_[m.key()] = m.value().get<std::string>();
    }
  }

  // One header entry: dtype, shape and data range, checked against the data section's size.
  TensorInfo read_tensor(const std::string& name, const nlohmann::json& v, const uint8_t* data,
                         uint64_t data_size) {
    if (!v.is_object()) fail("entry '" + name + "' is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail("tensor '" + name + "' has no string dtype");
    if (sh == v.end() || !sh->is_array()) fail("tensor '" + name + "' has no shape array");
    if (off == v.end() || !off->is_array() || off->size() != 2) {
      fail("tensor '" + name + "' has no [begin, end] data_offsets");
    }
    TensorInfo t;
    t.name = name;
    t.dtype_name = dt->get<std::string>();
    const int64_t elem = detail::dtype_size(t.dtype_name, &t.dtype);
    if (elem == 0) fail("tensor '" + name + "' has unknown dtype '" + t.dtype_name + "'");
    int64_t numel = 1;
    for (const auto& s : *sh) {
      if (!s.is_number_integer() || s.get<int64_t>() < 0) {
        fail("tensor '" + name + "' has a shape entry that is not a non-negative integer");
      }
      t.shape.push_back(s.get<int64_t>());
      try {
        numel = detail::checked_mul(numel, t.shape.back(), "tensor size");
      } catch (const Error&) {
        fail("tensor '" + name + "' shape overflows");
      }
    }
    t.numel = numel;
    for (const auto& o : *off) {
      if (!o.is_number_unsigned())
        fail("tensor '" + name + "' has a negative or non-integer offset");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end) fail("tensor '" + name + "' has data_offsets with begin > end");
    if (end > data_size) {
      fail("tensor '" + name + "' data range [" + std::to_string(begin) + ", " +
           std::to_string(end) + ") is out of bounds of the " + std::to_string(data_size) +
           "-byte data section (file truncated?)");
    }
    if (numel > std::numeric_limits<int64_t>::max() / elem ||
        static_cast<uint64_t>(numel * elem) != end - begin) {
      fail("tensor '" + name + "' byte length " + std::to_string(end - begin) +
           " does not match its shape and dtype");
    }
    t.nbytes = end - begin;
    t.data = data + begin;
    return t;
  }

  void check_overlaps(std::vector<Range>& ranges) {
    std::sort(ranges.begin(), ranges.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[i - 1].end) {
        fail("tensors '" + *ranges[i - 1].name + "' and '" + *ranges[i].name +
             "' have overlapping data ranges");
      }
    }
  }

  std::shared_ptr<const detail::FileBytes> bytes_;
  std::string label_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace TCONST_ABI
}  // namespace tconst
