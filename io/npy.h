// Token arrays in NumPy .npy files (int32, int64, uint16, uint32; 1-D or 2-D; C order).
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace moec::io {

struct TokenArray {
  std::vector<int32_t> ids;    // flattened in C order
  std::vector<int64_t> shape;  // 1 or 2 dims
};

TokenArray read_tokens_npy(const std::filesystem::path& path);
// Writes int32 tokens (for tests and tools).
void write_tokens_npy(const std::filesystem::path& path, const std::vector<int32_t>& ids);

}  // namespace moec::io
