#include "cairn/config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace cairn {

namespace {
std::string format_double(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  // Keep floats recognisable as floats when re-read ("1" would become an int).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "null";
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "?";
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string mark_text(const std::string& file, const YAML::Mark& m) {
  if (m.is_null() || m.line < 0) return file;
  return file + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

//! Rejects what would crash or exhaust a walk of the tree: an alias that
//! contains itself (infinite depth), nesting past the limit, aliases that
//! expand a small file into millions of values, huge keys or values.
void check_tree(const YAML::Node& node, const std::string& where_file, const std::string& path, size_t depth,
                size_t& budget) {
  auto where = [&](const YAML::Node& n) { return where_file.rfind("--set ", 0) == 0 ? where_file : mark_text(where_file, n.Mark()); };
  if (depth > ConfigLimits::kMaxDepth) {
    throw ConfigError(where(node), path,
                      "nesting deeper than " + std::to_string(ConfigLimits::kMaxDepth) +
                          " levels (an alias that refers to its own anchor?)");
  }
  if (budget == 0) {
    throw ConfigError(where(node), path,
                      "the config expands to more than " + std::to_string(ConfigLimits::kMaxValues) +
                          " values (aliases repeated too often?)");
  }
  --budget;
  if (node.IsScalar()) {
    if (node.Scalar().size() > ConfigLimits::kMaxScalarBytes) {
      throw ConfigError(where(node), path,
                        "a value of " + std::to_string(node.Scalar().size()) + " bytes (the limit is " +
                            std::to_string(ConfigLimits::kMaxScalarBytes) + ")");
    }
  } else if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar()) throw ConfigError(where(it->first), path, "keys must be plain names, not lists or mappings");
      const std::string& key = it->first.Scalar();
      if (key.size() > 256) throw ConfigError(where(it->first), path, "a key of " + std::to_string(key.size()) + " bytes");
      check_tree(it->second, where_file, path.empty() ? key : path + "." + key, depth + 1, budget);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      check_tree(node[i], where_file, path + "[" + std::to_string(i) + "]", depth + 1, budget);
    }
  }
}

void check_tree(const YAML::Node& node, const std::string& where_file) {
  size_t budget = ConfigLimits::kMaxValues;
  check_tree(node, where_file, "", 0, budget);
}

void check_duplicates(const YAML::Node& node, const std::string& path, const ConfigSource& src) {
  if (node.IsMap()) {
    std::map<std::string, YAML::Mark> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      const std::string sub = path.empty() ? key : path + "." + key;
      auto prev = seen.find(key);
      if (prev != seen.end()) {
        throw ConfigError(mark_text(src.file, it->first.Mark()), sub,
                          "duplicate key '" + key + "' (first defined at line " +
                              std::to_string(prev->second.line + 1) + ")");
      }
      seen[key] = it->first.Mark();
      check_duplicates(it->second, sub, src);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      check_duplicates(node[i], path + "[" + std::to_string(i) + "]", src);
    }
  }
}
}  // namespace

std::string ConfigError::Problem::text() const {
  return where + ": " + (key.empty() ? "" : key + ": ") + message;
}

ConfigError::ConfigError(const std::string& where, const std::string& key, const std::string& message,
                         bool unknown_key)
    : ConfigError(std::vector<Problem>{Problem{where, key, message, unknown_key}}) {}

ConfigError::ConfigError(std::vector<Problem> problems)
    : std::runtime_error(describe(problems)), problems_(std::move(problems)) {}

std::string ConfigError::describe(std::vector<Problem>& problems) {
  if (problems.empty()) problems.push_back(Problem{"", "", "invalid config", false});
  std::stable_partition(problems.begin(), problems.end(), [](const Problem& p) { return p.unknown_key; });
  if (problems.size() == 1) return problems.front().text();
  std::string s = std::to_string(problems.size()) + " problems:";
  for (const auto& p : problems) s += "\n  " + p.text();
  return s;
}

std::string ConfigSource::locate(const std::string& path, const YAML::Node& node) const {
  for (const auto& kv : overrides) {
    const std::string& p = kv.first;
    if (path == p || (path.size() > p.size() && path.compare(0, p.size(), p) == 0 &&
                      (path[p.size()] == '.' || path[p.size()] == '['))) {
      return kv.second;
    }
  }
  if (node.IsDefined()) return mark_text(file, node.Mark());
  return file;
}

ConfigNode::ConfigNode(YAML::Node node, YAML::Node resolved, std::string path,
                       std::shared_ptr<const ConfigSource> source)
    : node_(node), resolved_(resolved), path_(std::move(path)), source_(std::move(source)) {}

std::string ConfigNode::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

YAML::Node ConfigNode::lookup(const std::string& key) const {
  if (node_.IsMap()) {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
    }
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

void ConfigNode::fail(const std::string& key, const std::string& message) const {
  const std::string p = key.empty() ? path_ : child_path(key);
  YAML::Node at = key.empty() ? node_ : lookup(key);
  if (!at.IsDefined()) at = node_;
  throw ConfigError(source_->locate(p, at), p, message);
}

bool ConfigNode::has(const std::string& key) const { return lookup(key).IsDefined(); }

bool ConfigNode::is_null(const std::string& key) const {
  YAML::Node n = lookup(key);
  return !n.IsDefined() || n.IsNull();
}

// Every typed getter goes through read(): it marks the key as read, takes the
// default when the key is missing (or null while a default exists), and
// otherwise converts the node, failing with what was expected.
template <class T, class Convert>
T ConfigNode::read(const std::string& key, const std::optional<T>& def, const std::string& what, Convert convert) {
  read_.push_back(key);
  YAML::Node n = lookup(key);
  if (!n.IsDefined() || (n.IsNull() && def)) {
    if (!def) fail(key, "missing required key (" + what + ")");
    return *def;
  }
  try {
    return convert(n);
  } catch (const YAML::Exception&) {
    fail(key, "expected " + what + ", got " + describe(n));
  }
}

// Optional getters: a missing or null key reads as nullopt (resolved to null).
template <class T, class Get>
std::optional<T> ConfigNode::read_optional(const std::string& key, Get get) {
  YAML::Node n = lookup(key);
  if (!n.IsDefined() || n.IsNull()) {
    read_.push_back(key);
    resolved_[key] = YAML::Node(YAML::NodeType::Null);
    return std::nullopt;
  }
  return get();
}

namespace {
// A scalar as T; a non-scalar throws like a failed conversion.
template <class T>
T scalar_as(const YAML::Node& n) {
  if (!n.IsScalar()) throw YAML::TypedBadConversion<T>(n.Mark());
  return n.as<T>();
}

// A list of T, each item converted by scalar_as and checked by `check`.
template <class T, class Check>
std::vector<T> list_as(const YAML::Node& n, Check check) {
  if (!n.IsSequence()) throw YAML::TypedBadConversion<std::vector<T>>(n.Mark());
  std::vector<T> v;
  for (size_t i = 0; i < n.size(); ++i) {
    v.push_back(scalar_as<T>(n[i]));
    check(i, v.back());
  }
  return v;
}
}  // namespace

int64_t ConfigNode::get_int(const std::string& key, std::optional<int64_t> def, int64_t min, int64_t max) {
  const int64_t v = read<int64_t>(key, def, "an integer", scalar_as<int64_t>);
  if (v < min || v > max) {
    std::string range = max == INT64_MAX ? ">= " + std::to_string(min)
                        : min == INT64_MIN ? "<= " + std::to_string(max)
                                           : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
    fail(key, "expected an integer " + range + ", got " + std::to_string(v));
  }
  resolved_[key] = v;
  return v;
}

std::optional<int64_t> ConfigNode::get_optional_int(const std::string& key, int64_t min) {
  return read_optional<int64_t>(key, [&] { return get_int(key, std::nullopt, min); });
}

double ConfigNode::get_double(const std::string& key, std::optional<double> def, double min, double max,
                              bool min_exclusive) {
  const double v = read<double>(key, def, "a number", scalar_as<double>);
  if (std::isnan(v) || (min_exclusive ? v <= min : v < min) || v > max) {
    std::ostringstream os;
    os << "expected a number " << (min_exclusive ? "> " : ">= ") << min;
    if (max < 1e308) os << " and <= " << max;
    os << ", got " << format_double(v);
    fail(key, os.str());
  }
  resolved_[key] = YAML::Load(format_double(v));
  return v;
}

std::optional<double> ConfigNode::get_optional_double(const std::string& key, double min, double max) {
  return read_optional<double>(key, [&] { return get_double(key, std::nullopt, min, max); });
}

bool ConfigNode::get_bool(const std::string& key, std::optional<bool> def) {
  const bool v = read<bool>(key, def, "true or false", scalar_as<bool>);
  resolved_[key] = v;
  return v;
}

std::optional<bool> ConfigNode::get_optional_bool(const std::string& key) {
  return read_optional<bool>(key, [&] { return get_bool(key, std::nullopt); });
}

std::string ConfigNode::get_string(const std::string& key, std::optional<std::string> def) {
  std::string v = read<std::string>(key, def, "a string", [](const YAML::Node& n) {
    if (!n.IsScalar()) throw YAML::TypedBadConversion<std::string>(n.Mark());
    return n.Scalar();
  });
  resolved_[key] = v;
  return v;
}

std::optional<std::string> ConfigNode::get_optional_string(const std::string& key) {
  return read_optional<std::string>(key, [&] { return get_string(key, std::nullopt); });
}

std::string ConfigNode::get_choice(const std::string& key, std::optional<std::string> def,
                                   const std::vector<std::string>& choices) {
  const std::string v = get_string(key, def);
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
    fail(key, "expected one of " + list + "; got '" + v + "'");
  }
  return v;
}

std::vector<int64_t> ConfigNode::get_int_list(const std::string& key, std::optional<std::vector<int64_t>> def,
                                              int64_t min) {
  const auto v = read<std::vector<int64_t>>(key, def, "a list of integers like [256, 128]", [&](const YAML::Node& n) {
    return list_as<int64_t>(n, [&](size_t, int64_t x) {
      if (x < min) fail(key, "list items must be >= " + std::to_string(min) + ", got " + std::to_string(x));
    });
  });
  YAML::Node out(YAML::NodeType::Sequence);
  for (auto x : v) out.push_back(x);
  out.SetStyle(YAML::EmitterStyle::Flow);
  resolved_[key] = out;
  return v;
}

std::vector<double> ConfigNode::get_double_list(const std::string& key, std::optional<std::vector<double>> def,
                                                size_t size, double min, double max) {
  const std::string expected =
      size ? "a list of " + std::to_string(size) + " numbers" : std::string("a list of numbers");
  const auto v = read<std::vector<double>>(key, def, expected, [&](const YAML::Node& n) {
    return list_as<double>(n, [&](size_t, double x) {
      if (x < min || x > max) {
        std::ostringstream os;
        os << "list items must be in [" << min << ", " << max << "], got " << format_double(x);
        fail(key, os.str());
      }
    });
  });
  if (size && v.size() != size) fail(key, "expected " + expected + ", got " + std::to_string(v.size()));
  YAML::Node out(YAML::NodeType::Sequence);
  for (auto x : v) out.push_back(YAML::Load(format_double(x)));
  out.SetStyle(YAML::EmitterStyle::Flow);
  resolved_[key] = out;
  return v;
}

std::vector<std::string> ConfigNode::get_names(const std::string& key, std::optional<std::vector<std::string>> def) {
  const auto v = read<std::vector<std::string>>(key, def, "a name or a list of names", [&](const YAML::Node& n) {
    std::vector<std::string> out;
    if (n.IsScalar()) {
      out.push_back(n.Scalar());
    } else if (n.IsSequence()) {
      for (size_t i = 0; i < n.size(); ++i) {
        if (!n[i].IsScalar()) throw YAML::Exception(n.Mark(), "not a name");
        out.push_back(n[i].Scalar());
      }
    } else {
      throw YAML::Exception(n.Mark(), "not a name");
    }
    for (const auto& x : out) {
      if (x.empty()) throw YAML::Exception(n.Mark(), "empty name");
    }
    // An empty list is "none" where that is the default (trainer.freeze: []).
    if (out.empty() && !(def && def->empty())) throw YAML::Exception(n.Mark(), "no names");
    return out;
  });
  if (v.size() == 1) {
    resolved_[key] = v.front();
  } else {
    YAML::Node out(YAML::NodeType::Sequence);
    for (const auto& x : v) out.push_back(x);
    out.SetStyle(YAML::EmitterStyle::Flow);
    resolved_[key] = out;
  }
  return v;
}

ConfigNode ConfigNode::get_map(const std::string& key, bool required) {
  read_.push_back(key);
  YAML::Node n = lookup(key);
  if (!n.IsDefined() || n.IsNull()) {
    if (required) fail(key, "missing required section");
    n = YAML::Node(YAML::NodeType::Map);
  } else if (!n.IsMap()) {
    fail(key, "expected a mapping (key: value pairs), got " + describe(n));
  }
  YAML::Node r(YAML::NodeType::Map);
  resolved_[key] = r;
  return ConfigNode(n, r, child_path(key), source_);
}

std::vector<ConfigNode> ConfigNode::get_named_list(const std::string& key) {
  read_.push_back(key);
  YAML::Node n = lookup(key);
  std::vector<ConfigNode> out;
  YAML::Node r(YAML::NodeType::Sequence);
  resolved_[key] = r;
  if (!n.IsDefined() || n.IsNull()) return out;
  if (!n.IsSequence()) fail(key, "expected a list of names or {name: ...} mappings, got " + describe(n));
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string p = child_path(key) + "[" + std::to_string(i) + "]";
    YAML::Node item = n[i];
    if (item.IsScalar()) {
      // `accuracy` reads as {name: accuracy}; the name keeps its place in the file.
      YAML::Node m(YAML::NodeType::Map);
      m["name"] = n[i];
      item = m;
    } else if (!item.IsMap()) {
      throw ConfigError(source_->locate(p, n[i]), p, "expected a name or a mapping like {name: ...}, got " + describe(n[i]));
    }
    YAML::Node resolved_item(YAML::NodeType::Map);
    r.push_back(resolved_item);
    out.emplace_back(item, r[r.size() - 1], p, source_);
  }
  return out;
}

std::vector<ConfigNode> ConfigNode::get_map_list(const std::string& key) {
  read_.push_back(key);
  YAML::Node n = lookup(key);
  std::vector<ConfigNode> out;
  YAML::Node r(YAML::NodeType::Sequence);
  resolved_[key] = r;
  if (!n.IsDefined() || n.IsNull()) return out;
  if (!n.IsSequence()) fail(key, "expected a list, got " + describe(n));
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string p = child_path(key) + "[" + std::to_string(i) + "]";
    if (!n[i].IsMap()) {
      throw ConfigError(source_->locate(p, n[i]), p, "expected a mapping like {name: ...}, got " + describe(n[i]));
    }
    YAML::Node item(YAML::NodeType::Map);
    r.push_back(item);
    out.emplace_back(n[i], r[r.size() - 1], p, source_);
  }
  return out;
}

std::string ConfigNode::name() { return get_string("name", std::nullopt); }

std::string ConfigNode::get_path(const std::string& key, std::optional<std::string> def) {
  const std::string v = get_string(key, def);
  if (v.empty()) return v;
  const std::string p = child_path(key);
  const bool from_set = source_->locate(p, YAML::Node()).rfind("--set ", 0) == 0;
  std::filesystem::path path(v);
  if (path.is_relative() && lookup(key).IsDefined() && !from_set) {
    path = std::filesystem::path(source_->file).parent_path() / path;
  }
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(path, ec);
  const std::string out = (ec ? path : abs).lexically_normal().string();
  resolved_[key] = out;
  return out;
}

std::optional<std::string> ConfigNode::get_optional_path(const std::string& key) {
  if (is_null(key)) {
    get_optional_string(key);
    return std::nullopt;
  }
  return get_path(key, std::nullopt);
}

std::string did_you_mean(const std::string& name, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& k : known) {
    const size_t d = edit_distance(k, name);
    if (d < best_d) best_d = d, best = k;
  }
  if (!best.empty() && best_d <= std::max<size_t>(2, name.size() / 3)) return "; did you mean '" + best + "'?";
  return "";
}

void ConfigNode::finish() {
  if (!node_.IsMap()) return;
  std::vector<std::string> known;
  for (const auto& k : read_) {
    if (std::find(known.begin(), known.end(), k) == known.end()) known.push_back(k);
  }
  std::vector<ConfigError::Problem> problems;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string key = it->first.Scalar();
    if (std::find(read_.begin(), read_.end(), key) != read_.end()) continue;
    std::string msg = "unknown key '" + key + "'" + did_you_mean(key, known);
    if (!known.empty()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      msg += " (known keys: " + list + ")";
    }
    const std::string p = child_path(key);
    problems.push_back({source_->locate(p, it->first), p, msg, true});
  }
  if (!problems.empty()) throw ConfigError(std::move(problems));
}

ConfigNode ConfigDocument::top() { return ConfigNode(root, resolved, "", source); }

namespace {
// "a.b[2].c" -> segments; each is a key or an index.
struct Segment {
  std::string key;
  long index = -1;
};

std::vector<Segment> parse_path(const std::string& path, const std::string& arg) {
  std::vector<Segment> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '.') { ++i; continue; }
    if (path[i] == '[') {
      const size_t close = path.find(']', i);
      if (close == std::string::npos) throw ConfigError(arg, path, "unclosed '[' in the key path");
      Segment s;
      const std::string digits = path.substr(i + 1, close - i - 1);
      if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) {
        throw ConfigError(arg, path, "list index must be a non-negative number, got '" + digits.substr(0, 20) + "'");
      }
      s.index = std::stol(digits);
      out.push_back(s);
      i = close + 1;
      continue;
    }
    const size_t end = path.find_first_of(".[", i);
    Segment s;
    s.key = path.substr(i, end == std::string::npos ? std::string::npos : end - i);
    if (s.key.size() > 256) throw ConfigError(arg, path.substr(0, 80), "a key of " + std::to_string(s.key.size()) + " bytes");
    out.push_back(s);
    i = end == std::string::npos ? path.size() : end;
  }
  if (out.empty()) throw ConfigError(arg, path, "empty key path");
  if (out.size() > ConfigLimits::kMaxPathSegments) {
    throw ConfigError(arg, path.substr(0, 80), "a key path of more than " +
                                                   std::to_string(ConfigLimits::kMaxPathSegments) + " parts");
  }
  return out;
}
}  // namespace

ConfigDocument load_config(const std::string& file, const std::vector<std::string>& overrides) {
  ConfigDocument doc;
  doc.source = std::make_shared<ConfigSource>();
  doc.source->file = file;
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) throw ConfigError(file, "", "is a folder, not a config file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(file, "", "cannot read the config file (does it exist?)");
  std::string text;
  {
    std::vector<char> buf(64 * 1024);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
      text.append(buf.data(), static_cast<size_t>(in.gcount()));
      if (text.size() > ConfigLimits::kMaxFileBytes) {
        throw ConfigError(file, "", "the config file is larger than " +
                                        std::to_string(ConfigLimits::kMaxFileBytes >> 20) + " MiB (is it a config?)");
      }
    }
  }
  try {
    doc.root = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {  // its own message says only "bad file"
    throw ConfigError(mark_text(file, e.mark), "", "nesting deeper than the YAML parser allows (500 levels)");
  } catch (const YAML::ParserException& e) {
    throw ConfigError(mark_text(file, e.mark), "", "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    throw ConfigError(mark_text(file, e.mark), "", "YAML error: " + e.msg);
  }
  if (doc.root.IsNull()) doc.root = YAML::Node(YAML::NodeType::Map);
  if (!doc.root.IsMap()) throw ConfigError(mark_text(file, doc.root.Mark()), "", "the config must be a mapping of sections");
  check_tree(doc.root, file);
  check_duplicates(doc.root, "", *doc.source);

  for (const auto& ov : overrides) {
    // Named in errors; a huge argument is shortened so the message stays readable.
    const std::string arg = "--set " + (ov.size() > 120 ? ov.substr(0, 100) + "...(" + std::to_string(ov.size()) + " bytes)" : ov);
    const auto eq = ov.find('=');
    if (eq == std::string::npos || eq == 0) throw ConfigError(arg, "", "expected --set dotted.key=value");
    const std::string path = ov.substr(0, eq);
    YAML::Node value;
    try {
      value = YAML::Load(ov.substr(eq + 1));
    } catch (const YAML::DeepRecursion&) {
      throw ConfigError(arg, path, "cannot parse the value: nesting deeper than the YAML parser allows (500 levels)");
    } catch (const YAML::Exception& e) {
      throw ConfigError(arg, path, "cannot parse the value: " + e.msg);
    }
    check_tree(value, arg);
    const auto segments = parse_path(path, arg);
    YAML::Node cur = doc.root;
    std::string walked;
    for (size_t i = 0; i < segments.size(); ++i) {
      const bool last = i + 1 == segments.size();
      const Segment& s = segments[i];
      if (s.index >= 0) {
        walked += "[" + std::to_string(s.index) + "]";
        if (!cur.IsSequence() || static_cast<size_t>(s.index) >= cur.size()) {
          throw ConfigError(arg, walked, "no list item " + std::to_string(s.index) + " to override");
        }
        if (last) {
          cur[static_cast<size_t>(s.index)] = value;
        } else {
          YAML::Node next = cur[static_cast<size_t>(s.index)];
          cur.reset(next);
        }
      } else {
        walked += (walked.empty() ? "" : ".") + s.key;
        if (cur.IsNull() || !cur.IsDefined()) cur = YAML::Node(YAML::NodeType::Map);
        if (!cur.IsMap()) throw ConfigError(arg, walked, "cannot set a key inside a non-mapping value");
        if (last) {
          cur[s.key] = value;
        } else {
          YAML::Node next = cur[s.key];
          if (!next.IsDefined() || next.IsNull()) {
            cur[s.key] = YAML::Node(YAML::NodeType::Map);
            next = cur[s.key];
          }
          cur.reset(next);
        }
      }
    }
    doc.source->overrides[walked] = arg;
  }
  if (!overrides.empty()) check_tree(doc.root, file);
  doc.resolved = YAML::Node(YAML::NodeType::Map);
  return doc;
}

Value yaml_to_value(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return Value();
  if (n.IsSequence()) {
    Value l = Value::list();
    for (size_t i = 0; i < n.size(); ++i) l.push_back(yaml_to_value(n[i]));
    return l;
  }
  if (n.IsMap()) {
    Value d = Value::dict();
    for (auto it = n.begin(); it != n.end(); ++it) d.set(it->first.Scalar(), yaml_to_value(it->second));
    return d;
  }
  const std::string& s = n.Scalar();
  if (n.Tag() != "!") {  // plain scalars may be numbers or booleans
    int64_t i;
    auto r = std::from_chars(s.data(), s.data() + s.size(), i);
    if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return Value(i);
    double d;
    try {
      d = n.as<double>();
      return Value(d);
    } catch (const YAML::Exception&) {
    }
    if (s == "true" || s == "false") return Value(s == "true");
  }
  return Value(s);
}

std::string yaml_to_string(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

}  // namespace cairn
