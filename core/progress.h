// Progress on stderr for long work: a bar on a terminal, plain lines otherwise, nothing when quiet.
#pragma once
#include <chrono>
#include <string>

namespace moec {

struct LogOptions {
  bool quiet = false;
};
LogOptions& log_options();

// Informational line on stderr (suppressed by --quiet).
void log_info(const std::string& msg);

class Progress {
 public:
  // `unit` names what is counted ("layers", "tokens"); total 0 = unknown.
  Progress(std::string stage, long total, std::string unit);
  ~Progress();
  void update(long done, const std::string& detail = "");
  void finish(const std::string& detail = "");

 private:
  std::string stage_, unit_;
  long total_, done_ = 0;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_print_;
  void print(bool final, const std::string& detail);
};

}  // namespace moec
