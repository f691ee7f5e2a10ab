#!/usr/bin/env node
// Perplexity of a GGUF model as llama.cpp computes it (through node-llama-cpp 3.22.1, CPU only), on the
// protocol of ../shared/fixtures.md: the first N tokens cut into non-overlapping windows of W tokens, each
// window evaluated from an empty context at positions 0..W-1, tokens 1..W-1 scored from the full logits
// (log-softmax in float64). Prints {"tokens_scored", "nll", "ppl"} as one JSON line on stdout.
//
// Usage: node llama_ppl.mjs MODEL.gguf TOKENS.npy [--max-tokens N] [--window 256] [--threads T]
// node-llama-cpp is resolved from NODE_PATH or the usual node_modules lookup (see scripts/llama/README.md).
import fs from "node:fs";
import {createRequire} from "node:module";
import path from "node:path";
import {pathToFileURL} from "node:url";

function die(msg) {
    process.stderr.write(`llama_ppl: ${msg}\n`);
    process.exit(2);
}

function parseArgs(argv) {
    // One thread by default: llama.cpp's spinning thread barrier collapses on a loaded machine (4x slower
    // with 2 threads on 2 busy cores), and one thread gives run-to-run identical sums.
    const args = {window: 256, maxTokens: -1, threads: 1, positional: []};
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) die(`${a} needs a value`);
            const v = Number(argv[++i]);
            if (!Number.isInteger(v)) die(`${a} needs an integer, got '${argv[i]}'`);
            return v;
        };
        if (a === "--window") args.window = value();
        else if (a === "--max-tokens") args.maxTokens = value();
        else if (a === "--threads") args.threads = value();
        else if (a.startsWith("--")) die(`unknown option ${a}`);
        else args.positional.push(a);
    }
    if (args.positional.length !== 2) die("usage: llama_ppl.mjs MODEL.gguf TOKENS.npy [--max-tokens N] [--window 256] [--threads T]");
    if (args.window < 2) die(`--window must be at least 2, got ${args.window}`);
    return args;
}

// Reads a 1-D (or 2-D, flattened) little-endian integer .npy array.
function readNpyTokens(file) {
    const buf = fs.readFileSync(file);
    if (buf.length < 10 || buf.readUInt32BE(0) !== 0x934e554d || buf.toString("latin1", 4, 6) !== "PY")
        die(`${file}: not a .npy file`);
    const major = buf[6];
    const headerLen = major >= 2 ? buf.readUInt32LE(8) : buf.readUInt16LE(8);
    const start = (major >= 2 ? 12 : 10) + headerLen;
    const header = buf.toString("latin1", major >= 2 ? 12 : 10, start);
    const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
    if (/'fortran_order':\s*True/.test(header)) die(`${file}: Fortran-order arrays are not supported`);
    const readers = {
        "<i4": [4, (o) => buf.readInt32LE(o)], "<i8": [8, (o) => Number(buf.readBigInt64LE(o))],
        "<u2": [2, (o) => buf.readUInt16LE(o)], "<u4": [4, (o) => buf.readUInt32LE(o)],
    };
    if (!(descr in readers)) die(`${file}: dtype ${descr} is not supported (int32, int64, uint16, uint32)`);
    const [size, read] = readers[descr];
    const n = Math.floor((buf.length - start) / size);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = read(start + i * size);
    return out;
}

async function loadNodeLlamaCpp() {
    try {
        return await import("node-llama-cpp");
    } catch (e) {
        // ESM ignores NODE_PATH; resolve through it explicitly.
        for (const dir of (process.env.NODE_PATH ?? "").split(path.delimiter).filter(Boolean)) {
            try {
                const req = createRequire(path.join(path.resolve(dir), "noop.js"));
                return await import(pathToFileURL(req.resolve("node-llama-cpp")).href);
            } catch {}
        }
        die(`cannot load node-llama-cpp (${e.message}); install it with scripts/llama/install.sh and set NODE_PATH`);
    }
}

const args = parseArgs(process.argv.slice(2));
const [modelPath, tokensPath] = args.positional;
if (!fs.existsSync(modelPath)) die(`model ${modelPath} not found`);
let tokens = readNpyTokens(tokensPath);
if (args.maxTokens >= 0) tokens = tokens.slice(0, args.maxTokens);
const W = args.window;
const windows = Math.floor(tokens.length / W);
if (windows === 0) die(`${tokensPath}: ${tokens.length} tokens make no full window of ${W}`);

const {getLlama, LlamaLogLevel} = await loadNodeLlamaCpp();
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const vocab = model.tokens.length ?? 0;
for (let i = 0; i < windows * W; i++)
    if (!Number.isInteger(tokens[i]) || tokens[i] < 0 || (vocab > 0 && tokens[i] >= vocab))
        die(`${tokensPath}: token ${tokens[i]} at position ${i} is outside the vocabulary (${vocab})`);

const contextOptions = {contextSize: W, batchSize: W, sequences: 1, flashAttention: false};
if (args.threads > 0) contextOptions.threads = args.threads;
const context = await model.createContext(contextOptions);
const seq = context.getSequence();

let nllSum = 0;
let scored = 0;
for (let w = 0; w < windows; w++) {
    const win = tokens.slice(w * W, (w + 1) * W);
    await seq.clearHistory();
    // Logits after every position but the last; the last token is only a target.
    const input = win.map((t, i) => (i < W - 1 ? [t, {generateNext: {logits: true}}] : t));
    const out = await seq.controlledEvaluate(input);
    for (let i = 0; i < W - 1; i++) {
        const logits = out[i]?.next?.logits;
        if (!logits) die(`window ${w}: no logits returned at position ${i}`);
        let max = -Infinity;
        for (const v of logits.values()) if (v > max) max = v;
        let sum = 0;
        for (const v of logits.values()) sum += Math.exp(v - max);
        const target = logits.get(win[i + 1]);
        if (target === undefined) die(`window ${w}: no logit for token ${win[i + 1]} at position ${i}`);
        nllSum += max + Math.log(sum) - target;
        scored++;
    }
}
await context.dispose();
await model.dispose();
const nll = nllSum / scored;
process.stdout.write(JSON.stringify({tokens_scored: scored, nll, ppl: Math.exp(nll)}) + "\n");
