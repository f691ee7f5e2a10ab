// Row-parallel loop (OpenMP) that carries the first exception out of the parallel region, with the row
// that raised it, instead of terminating the process.
#pragma once
#include <atomic>
#include <exception>
#include <string>

#include "core/error.h"

namespace moec::detail {

template <class Fn>
void parallel_rows(int rows, const char* what, Fn&& fn) {
  std::string error;
  std::atomic<bool> failed{false};
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; ++r) {
    if (failed.load(std::memory_order_relaxed)) continue;  // skip remaining work after a failure
    try {
      fn(r);
    } catch (const std::exception& e) {
#pragma omp critical(moec_parallel_rows)
      if (!failed.exchange(true)) error = std::string(what) + ": row " + std::to_string(r) + ": " + e.what();
    }
  }
  if (failed) fail(error);
}

}  // namespace moec::detail
