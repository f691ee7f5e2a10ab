// moec export: a model (packed moec checkpoint or Hugging Face directory) in another format.
//   --format hf-dense  dequantized Hugging Face checkpoint (BF16 by default) that any HF loader reads
//   --format gguf      (dispatch point for io/gguf_export.h export_gguf, wired when it lands)
#include <cstdio>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/gguf_export.h"
#include "io/safetensors.h"
#include "model/source.h"
#include "quantize/checkpoint.h"

namespace moec::cli {

// Dense HF checkpoint: every tensor config.json implies, packed ones dequantized and stored as `dtype`,
// dense ones copied as stored when their dtype already is `dtype` (bit-exact), else converted.
static void export_hf_dense(const model::WeightSource& src, const fs::path& out, io::DType dtype) {
  const auto& spec = src.spec();
  fs::create_directories(out);
  write_file_atomic(out / "config.json", read_file(src.path() / "config.json"));
  io::SafetensorsWriter w(out);
  auto* packed = dynamic_cast<const quantize::PackedSource*>(&src);
  const io::TensorStore* store = packed ? &packed->store() : nullptr;
  if (auto* ck = dynamic_cast<const model::CheckpointSource*>(&src)) store = &ck->store();
  auto tensors = model::expected_tensors(spec);
  Progress prog("export", long(tensors.size()), "tensors");
  long done = 0;
  for (auto& t : tensors) {
    if (t.role == model::ExpectedTensor::Role::LmHead && spec.tie_embeddings) continue;
    const bool is_packed = packed && packed->is_packed(t.name);
    if (!is_packed && store && store->has(t.name) && store->get(t.name).dtype == dtype) {
      const auto& info = store->get(t.name);
      w.add(t.name, info.dtype, info.shape, info.data, info.nbytes);
    } else {
      Matrix m = src.matrix(t.name);
      w.add_f32(t.name, dtype, t.shape, m.data());
    }
    src.release(t.name);
    prog.update(++done);
  }
  w.finish();
  prog.finish();
}

static int run_export(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, format, out, dtype_s;
  opts.add_options()("model", po::value(&model_dir)->required(), "model directory (packed moec checkpoint or Hugging Face)")(
      "format", po::value(&format)->required(), "hf-dense | gguf")("output,o", po::value(&out)->required(), "output directory")(
      "dtype", po::value(&dtype_s)->default_value("bf16"), "hf-dense weight dtype: bf16 | f16 | f32")(
      "type", po::value<std::string>()->default_value("f16"),
      "gguf: routed-expert tensors f32 | f16 | bf16 | q8_0 | q4_0 | tq1_0 | tq2_0 (moec ternary codes are carried into tq1_0/tq2_0)")(
      "dense-type", po::value<std::string>(), "gguf: embeddings/attention/shared experts f32 | f16 | bf16 (default f16; f32 with --type f32)")(
      "alignment", po::value<uint32_t>()->default_value(32), "gguf: general.alignment")(
      "name", po::value<std::string>(), "gguf: general.name (default: the model directory name)")(
      "force", "overwrite an existing output");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "export MODEL --format hf-dense|gguf -o OUT [--dtype bf16|f16|f32] [--type q8_0]",
                     "Writes a model (Hugging Face, pruned/merged, or compressed moec checkpoint) in another format.\n"
                     "  hf-dense  a dequantized Hugging Face checkpoint directory any HF loader reads\n"
                     "  gguf      one .gguf file llama.cpp runs (Mixtral as arch 'llama', Qwen2-MoE as 'qwen2moe';\n"
                     "            experts stacked into ffn_{gate,up,down}_exps; see docs/GGUF.md)",
                     opts, pos, vm))
    return 0;
  if (vm.count("quiet")) log_options().quiet = true;
  auto src = model::open_model(model_dir);
  check_output_dir(out, model_dir, vm.count("force") > 0);
  if (format == "hf-dense") {
    io::DType dt;
    if (dtype_s == "bf16") dt = io::DType::BF16;
    else if (dtype_s == "f16") dt = io::DType::F16;
    else if (dtype_s == "f32") dt = io::DType::F32;
    else fail("--dtype '", dtype_s, "': expected bf16, f16 or f32");
    export_hf_dense(*src, out, dt);
  } else if (format == "gguf") {
    io::GgufExportOptions o;
    o.expert_type = io::parse_ggml_write_type(vm["type"].as<std::string>());
    if (vm.count("dense-type")) o.dense_type = io::parse_ggml_write_type(vm["dense-type"].as<std::string>());
    o.alignment = vm["alignment"].as<uint32_t>();
    o.force = vm.count("force") > 0;
    o.name = vm.count("name") ? vm["name"].as<std::string>() : fs::path(model_dir).filename().string();
    o.progress = !vm.count("quiet");
    auto r = io::export_gguf(*src, out, o);
    std::printf("%s: arch %s, %lld tensors, %.1f MiB; routed experts %s at %.4f bits/weight\n", out.c_str(), r.arch.c_str(),
                (long long)r.tensors, double(r.file_bytes) / (1 << 20), io::ggml_type_name(o.expert_type),
                r.expert_bits_per_weight());
    return 0;
  } else {
    fail("--format '", format, "': expected hf-dense or gguf");
  }
  std::printf("%s: exported %s as %s\n", out.c_str(), model_dir.c_str(), format.c_str());
  return 0;
}

MOEC_COMMAND(export, "write a model in another format (hf-dense; gguf)", run_export);

}  // namespace moec::cli
