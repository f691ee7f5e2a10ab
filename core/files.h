// File helpers: atomic writes (temp file + rename), hashing, path checks.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace moec {
namespace fs = std::filesystem;

// Writes `data` to `path` atomically: a temp file beside it, fsync, then rename.
void write_file_atomic(const fs::path& path, std::string_view data);
std::string read_file(const fs::path& path);

// A temp path beside `final_path` (same directory, so rename is atomic).
fs::path temp_path_for(const fs::path& final_path);

// SHA-256, hex encoded.
std::string sha256_hex(std::string_view data);
std::string sha256_file(const fs::path& path);  // streams the file

// Refuses to write into `out` if it is (or is inside) `input`, or exists without `force`.
void check_output_dir(const fs::path& out, const fs::path& input, bool force);

}  // namespace moec
