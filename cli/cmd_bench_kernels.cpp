// moec bench-kernels: decode+multiply throughput of every codec vs fp32 sgemv, bf16 and memory bandwidth.
#include <cstdio>
#include <iostream>
#include <sstream>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "kernels/bench.h"
#include "kernels/gemv.h"

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

int run_bench_kernels(int argc, char** argv) {
  namespace po = moec::cli::po;
  po::options_description opts("options");
  std::string codecs, shapes, batches = "1,8", act = "both";
  moec::BenchOptions bo;
  opts.add_options()("json", "print one JSON object per (codec, shape, batch) as a JSON array on stdout")(
      "quick", "shorter measurements and smaller data sets (still beyond the LLC)")(
      "codecs", po::value(&codecs), "comma-separated codecs (default: all)")(
      "shapes", po::value(&shapes), "comma-separated ROWSxCOLS (default: 14336x4096,4096x14336,512x256,256x512)")(
      "batches", po::value(&batches)->default_value("1,8"), "comma-separated batch sizes (tokens per expert)")(
      "act", po::value(&act)->default_value("both"),
      "activation precision: fp32 (exact), int8 (quantized per call, VNNI kernel), or both")(
      "group", po::value(&bo.group)->default_value(128), "scale group size for int/tern2 codecs (subbit: per row)")(
      "zeros", po::value(&bo.p0_zero)->default_value(0.85), "fraction of zero ternary codes")(
      "min-time", po::value(&bo.min_seconds)->default_value(0.4), "seconds per measurement")(
      "mib", po::value<size_t>()->default_value(256), "data-set size in MiB for shapes beyond the LLC");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!moec::cli::parse_options(argc, argv, "bench-kernels [--json] [--quick] [options]",
                                "Benchmarks packed-weight matvec/matmul kernels against OpenBLAS sgemv (fp32), bf16\n"
                                "weights and a streaming read of the same number of bytes.",
                                opts, pos, vm))
    return 0;
  bo.quick = vm.count("quick") > 0;
  bo.big_bytes = vm["mib"].as<size_t>() << 20;
  for (auto& c : split(codecs, ',')) bo.codecs.push_back(moec::codec_from_name(c));
  for (auto& s : split(shapes, ',')) {
    auto p = split(s, 'x');
    if (p.size() != 2) moec::fail("--shapes: '", s, "' is not ROWSxCOLS");
    bo.shapes.emplace_back(std::stoi(p[0]), std::stoi(p[1]));
  }
  bo.batches.clear();
  for (auto& b : split(batches, ',')) {
    int n = std::stoi(b);
    if (n < 1) moec::fail("--batches: ", n, " must be >= 1");
    bo.batches.push_back(n);
  }
  if (act == "fp32") bo.acts = {moec::ActQuant::None};
  else if (act == "int8") bo.acts = {moec::ActQuant::Int8};
  else if (act == "both") bo.acts = {moec::ActQuant::None, moec::ActQuant::Int8};
  else moec::fail("--act: '", act, "' must be fp32, int8 or both");
  const bool json = vm.count("json") > 0;
  std::fprintf(stderr, "bench-kernels: ISA %s, int8 activations: %s\n", moec::isa_name(moec::best_isa()),
               moec::q8_vnni_supported() ? "AVX-512 VNNI kernel" : "scalar reference (no AVX512_VNNI)");
  auto rows = moec::run_kernel_bench(bo, [&](const std::string& l) { std::fprintf(stderr, "%s\n", l.c_str()); });
  if (json) std::cout << moec::bench_json(rows).dump(1) << "\n";
  else std::cout << moec::bench_table(rows);
  return 0;
}

// The command name has a dash, so register directly rather than with MOEC_COMMAND.
static ::moec::cli::Register reg_bench_kernels({"bench-kernels", "benchmark packed-weight decode kernels", run_bench_kernels});

}  // namespace
