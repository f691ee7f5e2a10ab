// GGUF export options for the command line. Deliberately NOT registered as a command: the lead folds
// run_export_gguf() into `moec export --format gguf` (register it there, or with
// MOEC_COMMAND(export_gguf, "...", run_export_gguf) while testing).
#include <cstdio>

#include "cli/options.h"
#include "core/error.h"
#include "io/gguf_export.h"

namespace moec::cli {

int run_export_gguf(int argc, char** argv);

int run_export_gguf(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, out, type = "f16", dense;
  uint32_t alignment = 32;
  opts.add_options()("model", po::value(&model_dir)->required(), "Hugging Face MoE checkpoint directory")(
      "out", po::value(&out)->required(), "output .gguf file")(
      "type", po::value(&type)->default_value("f16"), "routed-expert tensors: f32, f16, bf16, q8_0, q4_0, tq1_0, tq2_0")(
      "dense-type", po::value(&dense), "embeddings/attention/shared experts: f32, f16 or bf16 (default: f32 if --type f32, else f16)")(
      "alignment", po::value(&alignment)->default_value(32), "general.alignment (power of two)")(
      "name", po::value<std::string>(), "general.name (default: the model directory name)")(
      "force", "replace an existing output file (never an input)");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "export MODEL_DIR --format gguf --out FILE.gguf [--type q8_0]",
                     "Writes a GGUF file llama.cpp runs: Mixtral as arch 'llama' (q/k rows permuted for its RoPE),\n"
                     "Qwen2-MoE as 'qwen2moe'; experts stacked into ffn_{gate,up,down}_exps. See docs/GGUF.md.",
                     opts, pos, vm))
    return 0;
  io::GgufExportOptions o;
  o.expert_type = io::parse_ggml_write_type(type);
  if (!dense.empty()) o.dense_type = io::parse_ggml_write_type(dense);
  o.alignment = alignment;
  o.force = vm.count("force") > 0;
  if (vm.count("name")) o.name = vm["name"].as<std::string>();
  o.progress = !vm.count("quiet");
  auto r = io::export_gguf(model_dir, out, o);
  std::printf("%s: arch %s, %lld tensors, %.1f MiB; routed experts %s at %.4f bits/weight\n", out.c_str(), r.arch.c_str(),
              (long long)r.tensors, double(r.file_bytes) / (1 << 20), io::ggml_type_name(o.expert_type),
              r.expert_bits_per_weight());
  return 0;
}

}  // namespace moec::cli
