#include "kernels/subbit.h"

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <tuple>

#include "core/error.h"

namespace moec {

namespace {

// Tunstall construction: start with the three one-symbol sequences, repeatedly replace the most probable
// sequence shorter than kMaxLen by its three one-symbol extensions while the dictionary has room (each step adds
// 2 entries). Ties go to the sequence created first. Codewords are then numbered in depth-first order (children
// in symbol order 0, +1, -1), so the dictionary depends only on the three probabilities.
std::unique_ptr<SubbitDict> build_dict(SubbitParams p) {
  auto d = std::make_unique<SubbitDict>();
  d->params = p;
  const double tot = double(p.p0) + double(p.pplus) + double(p.pminus);
  const double ps[3] = {p.p0 / tot, p.pplus / tot, p.pminus / tot};
  std::vector<double> prob;
  std::vector<int> depth;
  auto add_node = [&](double pr, int dep) {
    d->trie.push_back({{-1, -1, -1}, 0});  // codeword 0 marks "leaf" until numbering below
    prob.push_back(pr);
    depth.push_back(dep);
    return int32_t(d->trie.size() - 1);
  };
  using Item = std::tuple<double, int64_t, int32_t>;  // (probability, -creation order, node)
  std::priority_queue<Item> heap;
  auto expand = [&](int32_t n) {
    for (int s = 0; s < 3; ++s) {
      int32_t c = add_node(prob[n] * ps[s], depth[n] + 1);
      d->trie[n].child[s] = c;
      if (depth[c] < SubbitDict::kMaxLen) heap.emplace(prob[c], -int64_t(c), c);
    }
  };
  add_node(1.0, 0);
  expand(0);
  int leaves = 3;
  while (leaves + 2 <= SubbitDict::kCodewords && !heap.empty()) {
    int32_t n = std::get<2>(heap.top());
    heap.pop();
    expand(n);
    leaves += 2;
  }
  d->seq.assign(SubbitDict::kCodewords, 0);
  d->len.assign(SubbitDict::kCodewords, 0);
  // Depth-first numbering of the leaves.
  struct Frame {
    int32_t node;
    int dep;
    uint64_t seq;
  };
  std::vector<Frame> stack{{0, 0, 0}};
  int next = 0;
  while (!stack.empty()) {
    Frame f = stack.back();
    stack.pop_back();
    SubbitDict::Node& nd = d->trie[f.node];
    if (f.node != 0 && nd.child[0] < 0) {
      nd.codeword = next;
      d->seq[next] = f.seq;
      d->len[next] = uint8_t(f.dep);
      ++next;
      continue;
    }
    nd.codeword = -1;
    for (int s = 2; s >= 0; --s)  // push in reverse so symbol 0 is visited first
      stack.push_back({nd.child[s], f.dep + 1, f.seq | (uint64_t(s) << (2 * f.dep))});
  }
  d->used = next;
  return d;
}

}  // namespace

const SubbitDict& subbit_dict(SubbitParams p) {
  if (p.p0 == 0 || p.pplus == 0 || p.pminus == 0)
    fail("subbit: dictionary probabilities (", int(p.p0), ", ", int(p.pplus), ", ", int(p.pminus), ") must be in 1..255");
  static std::mutex mu;
  static std::map<std::tuple<int, int, int>, std::unique_ptr<SubbitDict>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{p.p0, p.pplus, p.pminus}];
  if (!slot) slot = build_dict(p);
  return *slot;
}

SubbitParams subbit_params_from_counts(uint64_t n0, uint64_t nplus, uint64_t nminus) {
  const double tot = double(n0) + double(nplus) + double(nminus);
  auto q = [&](uint64_t n) {
    double v = tot > 0 ? std::round(255.0 * double(n) / tot) : 1.0;
    return uint8_t(std::min(255.0, std::max(1.0, v)));
  };
  return {q(n0), q(nplus), q(nminus)};
}

void subbit_encode_row(const SubbitDict& d, const uint8_t* codes, int n, std::vector<uint16_t>& out) {
  int32_t node = 0;
  for (int i = 0; i < n; ++i) {
    node = d.trie[node].child[codes[i]];
    if (d.trie[node].codeword >= 0) {
      out.push_back(uint16_t(d.trie[node].codeword));
      node = 0;
    }
  }
  if (node != 0) {  // unfinished sequence at the row end: complete it with zero codes (decoders drop them)
    while (d.trie[node].codeword < 0) node = d.trie[node].child[0];
    out.push_back(uint16_t(d.trie[node].codeword));
  }
}

double ternary_entropy(uint64_t n0, uint64_t nplus, uint64_t nminus) {
  const double tot = double(n0) + double(nplus) + double(nminus);
  double h = 0;
  for (uint64_t n : {n0, nplus, nminus})
    if (n) h -= double(n) / tot * std::log2(double(n) / tot);
  return h;
}

}  // namespace moec
