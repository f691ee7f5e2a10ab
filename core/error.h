// Errors that reach the user. Every message names the thing that is wrong (file, tensor, field).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace moec {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws moec::Error with the concatenation of the arguments (anything streamable).
template <class... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}

}  // namespace moec
