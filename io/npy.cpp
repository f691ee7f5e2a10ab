#include "io/npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "core/files.h"

namespace moec::io {

TokenArray read_tokens_npy(const std::filesystem::path& path) {
  const std::string f = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open token file ", f);
  char magic[8] = {};
  in.read(magic, 8);
  if (in.gcount() != 8 || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(f, ": not a .npy file (bad magic)");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    in.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else if (magic[6] == 2 || magic[6] == 3) {
    in.read(reinterpret_cast<char*>(&hlen), 4);
  } else {
    fail(f, ": unsupported .npy version ", int(magic[6]));
  }
  if (!in || hlen > (1u << 20)) fail(f, ": bad .npy header length");
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (size_t(in.gcount()) != hlen) fail(f, ": truncated .npy header");
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr'\\s*:\\s*'([^']*)'"))) fail(f, ": .npy header has no descr");
  std::string descr = m[1];
  if (std::regex_search(header, m, std::regex("'fortran_order'\\s*:\\s*True"))) fail(f, ": Fortran-order arrays are not supported (save with C order)");
  if (!std::regex_search(header, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)"))) fail(f, ": .npy header has no shape");
  TokenArray out;
  std::string dims = m[1];
  std::regex num("(\\d+)");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it)
    out.shape.push_back(std::stoll((*it)[1]));
  if (out.shape.empty() || out.shape.size() > 2) fail(f, ": token array must be 1-D or 2-D, got ", out.shape.size(), " dimensions");
  int64_t n = 1;
  for (auto d : out.shape) n *= d;
  if (n == 0) fail(f, ": token array is empty");
  size_t esize;
  bool is_signed;
  char order = descr.empty() ? '?' : descr[0];
  std::string code = descr.size() > 1 ? descr.substr(1) : "";
  if (code == "i4") esize = 4, is_signed = true;
  else if (code == "i8") esize = 8, is_signed = true;
  else if (code == "u2") esize = 2, is_signed = false;
  else if (code == "u4") esize = 4, is_signed = false;
  else fail(f, ": token dtype '", descr, "' not supported (int32, int64, uint16 or uint32 expected)");
  if (order == '>') fail(f, ": big-endian arrays are not supported");
  std::vector<char> raw(size_t(n) * esize);
  in.read(raw.data(), std::streamsize(raw.size()));
  if (size_t(in.gcount()) != raw.size()) fail(f, ": truncated data (", in.gcount(), " of ", raw.size(), " bytes)");
  out.ids.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t v;
    const char* p = raw.data() + size_t(i) * esize;
    if (esize == 8) std::memcpy(&v, p, 8);
    else if (esize == 4 && is_signed) { int32_t x; std::memcpy(&x, p, 4); v = x; }
    else if (esize == 4) { uint32_t x; std::memcpy(&x, p, 4); v = x; }
    else { uint16_t x; std::memcpy(&x, p, 2); v = x; }
    if (v < 0 || v > INT32_MAX) fail(f, ": token id ", v, " at position ", i, " is out of range");
    out.ids[size_t(i)] = int32_t(v);
  }
  return out;
}

void write_tokens_npy(const std::filesystem::path& path, const std::vector<int32_t>& ids) {
  std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (" + std::to_string(ids.size()) + ",), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  uint16_t hl = uint16_t(header.size());
  out.append(reinterpret_cast<const char*>(&hl), 2);
  out += header;
  out.append(reinterpret_cast<const char*>(ids.data()), ids.size() * 4);
  write_file_atomic(path, out);
}

}  // namespace moec::io
