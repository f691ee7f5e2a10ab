// Shared Boost.Program_options plumbing for subcommands: --help text, parse errors as usage errors.
#pragma once
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>

namespace moec::cli {
namespace po = boost::program_options;

// Parses argv; prints help and returns false when --help was given. Throws moec::Error on bad usage.
bool parse_options(int argc, char** argv, const std::string& usage_line, const std::string& description,
                   po::options_description& opts, po::positional_options_description& pos, po::variables_map& vm);

}  // namespace moec::cli
