#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace moec {

LogOptions& log_options() {
  static LogOptions o;
  return o;
}

void log_info(const std::string& msg) {
  if (!log_options().quiet) std::fprintf(stderr, "%s\n", msg.c_str());
}

Progress::Progress(std::string stage, long total, std::string unit)
    : stage_(std::move(stage)), unit_(std::move(unit)), total_(total), tty_(::isatty(2)) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_ && done_ > 0 && tty_ && !log_options().quiet) std::fprintf(stderr, "\n");
}

void Progress::update(long done, const std::string& detail) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  // A terminal gets a redrawn bar a few times a second; a log gets a line at most every 2 s.
  if (since < (tty_ ? 0.2 : 2.0)) return;
  last_print_ = now;
  print(false, detail);
}

void Progress::finish(const std::string& detail) {
  if (finished_) return;
  finished_ = true;
  if (total_ > 0) done_ = total_;
  print(true, detail);
}

void Progress::print(bool final, const std::string& detail) {
  if (log_options().quiet) return;
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? done_ / secs : 0;
  char eta[32] = "";
  if (total_ > 0 && rate > 0 && done_ < total_) std::snprintf(eta, sizeof eta, " eta %.0fs", (total_ - done_) / rate);
  char line[512];
  if (total_ > 0) {
    int width = 24, filled = int(std::lround(width * double(done_) / double(total_)));
    std::string bar(size_t(std::max(0, std::min(width, filled))), '#');
    bar.resize(size_t(width), '.');
    std::snprintf(line, sizeof line, "%s [%s] %ld/%ld %s, %.3g %s/s, %.1fs%s%s%s", stage_.c_str(), bar.c_str(), done_,
                  total_, unit_.c_str(), rate, unit_.c_str(), secs, eta, detail.empty() ? "" : " ", detail.c_str());
  } else {
    std::snprintf(line, sizeof line, "%s %ld %s, %.3g %s/s, %.1fs%s%s", stage_.c_str(), done_, unit_.c_str(), rate,
                  unit_.c_str(), secs, detail.empty() ? "" : " ", detail.c_str());
  }
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line);
}

}  // namespace moec
