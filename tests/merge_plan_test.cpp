// Merge plans: JSON round trip and rejection of inconsistent plans with errors naming layer/expert.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "merge/merge.h"

using namespace moec;
using namespace moec::merge;
using nlohmann::json;

namespace {

MergePlan sample_plan() {
  MergePlan p;
  p.router = RouterMerge::FrequencyWeighted;
  LayerPlan l0;
  l0.num_experts = 4;
  l0.method = MergeMethod::Subspace;
  l0.clusters = {{{0, 2}, 2, {17, 19, 23}, {0.9123456789012345, 0.5, 1.0 / 3.0}}, {{1, 3}, 1, {0, 0, 0}, {1, 1, 1}}};
  LayerPlan l1;
  l1.num_experts = 3;
  l1.method = MergeMethod::MSmoe;
  l1.clusters = {{{0}, 0, {0, 0, 0}, {1, 1, 1}}, {{1, 2}, 2, {0, 0, 0}, {1, 1, 1}}};
  p.layers = {l0, l1};
  return p;
}

// Expects plan_from_json to throw with a message containing every fragment.
void expect_rejected(const json& j, std::vector<std::string> fragments, int layers = -1) {
  try {
    plan_from_json(j, layers);
    ADD_FAILURE() << "plan accepted: " << j.dump();
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(MergePlan, JsonRoundTrip) {
  MergePlan p = sample_plan();
  const std::string text = plan_to_json(p).dump(2);
  MergePlan q = plan_from_json(json::parse(text), 2);
  EXPECT_EQ(q.router, p.router);
  ASSERT_EQ(q.layers.size(), p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    EXPECT_EQ(q.layers[l].num_experts, p.layers[l].num_experts);
    EXPECT_EQ(q.layers[l].method, p.layers[l].method);
    ASSERT_EQ(q.layers[l].clusters.size(), p.layers[l].clusters.size());
    for (size_t c = 0; c < p.layers[l].clusters.size(); ++c) {
      const ClusterPlan &a = p.layers[l].clusters[c], &b = q.layers[l].clusters[c];
      EXPECT_EQ(a.members, b.members);
      EXPECT_EQ(a.dominant, b.dominant);
      EXPECT_EQ(a.rank, b.rank);
      EXPECT_EQ(a.energy, b.energy);  // exact: doubles round-trip through the JSON text
    }
  }
  EXPECT_EQ(plan_to_json(q).dump(2), text);
  auto j = json::parse(text);
  EXPECT_EQ(j["layers"][1]["clusters"][1]["members"], json::array({1, 2}));
  EXPECT_EQ(j["layers"][0]["method"], "subspace");
  EXPECT_EQ(j["router"], "frequency");
}

TEST(MergePlan, RejectsBadPlans) {
  const json good = plan_to_json(sample_plan());
  auto edit = [&](const std::function<void(json&)>& f) {
    json j = good;
    f(j);
    return j;
  };
  expect_rejected(good, {"2 layers", "model has 3"}, 3);
  expect_rejected(edit([](json& j) { j["layers"][1]["clusters"][1]["members"] = {1, 9}; }),
                  {"layer 1", "unknown expert 9"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][1]["members"] = {1, 2}; }),
                  {"layer 0", "expert 2 appears twice"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][1]["members"] = {1}; j["layers"][0]["clusters"][1]["dominant"] = 1; }),
                  {"layer 0", "expert 3 is in no cluster"});
  expect_rejected(edit([](json& j) { j["layers"][1]["clusters"][1]["dominant"] = 0; }),
                  {"layer 1 cluster 1", "dominant expert 0"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][1]["members"] = {3, 1}; }), {"not sorted"});
  expect_rejected(edit([](json& j) { j["layers"][1]["method"] = "magic"; }), {"unknown merge method 'magic'"});
  expect_rejected(edit([](json& j) { j["router"] = "sum"; }), {"unknown router merge 'sum'"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][0].erase("dominant"); }),
                  {"layers[0].clusters[0].dominant"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][0]["rank"]["up"] = "x"; }), {"rank.up"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"][0]["energy"]["down"] = 1.5; }), {"down energy 1.5"});
  expect_rejected(edit([](json& j) { j["layers"][1]["layer"] = 5; }), {"layers[1].layer is 5"});
  expect_rejected(edit([](json& j) { j["version"] = 2; }), {"version 2"});
  expect_rejected(edit([](json& j) { j["format"] = "other"; }), {"format"});
  expect_rejected(edit([](json& j) { j["layers"][0]["clusters"] = json::array(); }), {"layer 0", "no clusters"});
}

TEST(MergePlan, FromClusters) {
  Clusters cl = {{0, 3}, {1, 2, 4}};
  std::vector<double> freq = {5, 1, 7, 2, 7};
  LayerPlan lp = make_layer_plan(cl, freq, 5, MergeMethod::MSmoe);
  ASSERT_EQ(lp.clusters.size(), 2u);
  EXPECT_EQ(lp.clusters[0].dominant, 0);
  EXPECT_EQ(lp.clusters[1].dominant, 2);  // tie 2 vs 4 -> lower id
  MergePlan p;
  p.layers = {lp};
  EXPECT_NO_THROW(validate_plan(p, 1));
  p.layers[0].num_experts = 6;  // expert 5 now uncovered
  EXPECT_THROW(validate_plan(p, 1), Error);
}
