// moec export: a model (packed moec checkpoint or Hugging Face directory) in another format.
//   --format hf-dense  dequantized Hugging Face checkpoint (BF16 by default) that any HF loader reads
//   --format gguf      (dispatch point for io/gguf_export.h export_gguf, wired when it lands)
#include <cstdio>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
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
      "force", "overwrite an existing output directory");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "export MODEL --format hf-dense|gguf -o OUT [--dtype bf16|f16|f32]",
                     "Writes a model in another format. hf-dense: a dequantized Hugging Face checkpoint.", opts, pos, vm))
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
    // Dispatch point: io/gguf_export.h export_gguf(*src, out, ...) once the GGUF exporter lands.
    fail("--format gguf: the GGUF exporter is not part of this build yet");
  } else {
    fail("--format '", format, "': expected hf-dense or gguf");
  }
  std::printf("%s: exported %s as %s\n", out.c_str(), model_dir.c_str(), format.c_str());
  return 0;
}

MOEC_COMMAND(export, "write a model in another format (hf-dense; gguf)", run_export);

}  // namespace moec::cli
