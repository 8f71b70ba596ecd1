// Strict YAML configuration.
//
// ConfigNode reads one YAML mapping with typed getters that apply defaults,
// check types and ranges, and record the resolved value (defaults included)
// for `cairn print-config` and the run's config.yaml. finish() rejects keys
// nobody read. Every error names the file, line, column and key path:
//
//   configs/x.yaml:14:11: callbacks[0].mode: expected one of min, max; got 'maxx'
//
// Values changed with `--set a.b=v` are reported as coming from that argument.
#pragma once

#include "cairn/value.h"

#include <yaml-cpp/node/node.h>

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

class ConfigError : public std::runtime_error {
 public:
  //! One thing wrong with a config.
  struct Problem {
    std::string where;    //!< "file:line:column" or "--set k=v"
    std::string key;      //!< key path, e.g. callbacks[0].mode
    std::string message;
    bool unknown_key = false;  //!< a key nobody reads (usually a typo): listed first
    std::string text() const;
  };
  ConfigError(const std::string& where, const std::string& key, const std::string& message,
              bool unknown_key = false);
  //! Several problems in one message, unknown keys first (order otherwise kept).
  explicit ConfigError(std::vector<Problem> problems);
  const std::string& where() const { return problems_.front().where; }  //!< of the first problem
  const std::string& key() const { return problems_.front().key; }      //!< of the first problem
  const std::vector<Problem>& problems() const { return problems_; }

 private:
  static std::string describe(std::vector<Problem>& problems);
  std::vector<Problem> problems_;
};

//! Where the config came from: the file, and which paths --set overrode.
struct ConfigSource {
  std::string file;
  std::map<std::string, std::string> overrides;  //!< key path -> "--set path=value"
  std::string locate(const std::string& path, const YAML::Node& node) const;
};

class ConfigNode {
 public:
  ConfigNode(YAML::Node node, YAML::Node resolved, std::string path, std::shared_ptr<const ConfigSource> source);

  bool has(const std::string& key) const;
  //! A required or defaulted integer in [min, max].
  int64_t get_int(const std::string& key, std::optional<int64_t> def, int64_t min = INT64_MIN,
                  int64_t max = INT64_MAX);
  //! An integer or null (returns nullopt for null or a missing key).
  std::optional<int64_t> get_optional_int(const std::string& key, int64_t min = INT64_MIN);
  //! A number; `min_exclusive` makes the lower bound strict.
  double get_double(const std::string& key, std::optional<double> def, double min = -1e308, double max = 1e308,
                    bool min_exclusive = false);
  std::optional<double> get_optional_double(const std::string& key, double min = -1e308, double max = 1e308);
  bool get_bool(const std::string& key, std::optional<bool> def);
  std::optional<bool> get_optional_bool(const std::string& key);
  std::string get_string(const std::string& key, std::optional<std::string> def);
  std::optional<std::string> get_optional_string(const std::string& key);
  //! A file path. A relative path written in the config file is resolved from
  //! the config file's folder (so a config finds its data wherever it is run
  //! from), one given with --set from the current directory; the resolved,
  //! absolute path is recorded.
  std::string get_path(const std::string& key, std::optional<std::string> def);
  std::optional<std::string> get_optional_path(const std::string& key);
  std::string get_choice(const std::string& key, std::optional<std::string> def,
                         const std::vector<std::string>& choices);
  std::vector<int64_t> get_int_list(const std::string& key, std::optional<std::vector<int64_t>> def,
                                    int64_t min = INT64_MIN);
  //! A list of numbers in [min, max]; `size` > 0 requires exactly that many.
  std::vector<double> get_double_list(const std::string& key, std::optional<std::vector<double>> def,
                                      size_t size = 0, double min = -1e308, double max = 1e308);
  //! One name or a list of names (`label: y` or `label: [a, b]`).
  std::vector<std::string> get_names(const std::string& key, std::optional<std::vector<std::string>> def);
  //! A nested mapping; a missing optional one yields an empty mapping.
  ConfigNode get_map(const std::string& key, bool required = false);
  bool is_null(const std::string& key) const;
  //! A list of mappings (e.g. callbacks).
  std::vector<ConfigNode> get_map_list(const std::string& key);
  //! A list whose items are mappings with a `name`, or just the name
  //! (`metrics: [accuracy, {name: f1, average: micro}]`).
  std::vector<ConfigNode> get_named_list(const std::string& key);
  //! The mapping's `name` key (required), for registry lookups.
  std::string name();

  //! Errors on every key that no getter read, suggesting the closest known key.
  void finish();
  //! An error at `key` of this node (or at the node itself for "").
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  const std::string& path() const { return path_; }
  const YAML::Node& node() const { return node_; }
  const YAML::Node& resolved() const { return resolved_; }

 private:
  std::string child_path(const std::string& key) const;
  YAML::Node lookup(const std::string& key) const;
  template <class T, class Convert>
  T read(const std::string& key, const std::optional<T>& def, const std::string& what, Convert convert);
  template <class T, class Get>
  std::optional<T> read_optional(const std::string& key, Get get);

  YAML::Node node_;
  YAML::Node resolved_;
  std::string path_;
  std::shared_ptr<const ConfigSource> source_;
  std::vector<std::string> read_;
};

//! A parsed config file with --set overrides applied, checked for duplicate keys.
struct ConfigDocument {
  YAML::Node root;
  YAML::Node resolved;  //!< filled in by the getters
  std::shared_ptr<ConfigSource> source;
  ConfigNode top();
};

//! Limits on what a config may hold (hostile or broken files get exit 2, not a crash).
struct ConfigLimits {
  static constexpr size_t kMaxFileBytes = 4u << 20;   //!< the config file
  static constexpr size_t kMaxDepth = 32;             //!< nesting of mappings and lists
  static constexpr size_t kMaxValues = 100000;        //!< values, counting each use of an alias
  static constexpr size_t kMaxScalarBytes = 65536;    //!< one key or value
  static constexpr size_t kMaxPathSegments = 32;      //!< of a --set key path
};

//! Loads `file` and applies overrides ("a.b[0].c=value", value parsed as YAML).
//! Throws ConfigError (missing file, syntax error, duplicate key, bad override,
//! an alias that contains itself, nesting or sizes past ConfigLimits).
ConfigDocument load_config(const std::string& file, const std::vector<std::string>& overrides = {});

//! "; did you mean 'x'?" for the known name closest to `name`, or "" when none is close.
std::string did_you_mean(const std::string& name, const std::vector<std::string>& known);

//! YAML -> Value (maps, lists, ints, floats, bools, null, strings).
Value yaml_to_value(const YAML::Node& node);
//! Emits a node as block-style YAML text.
std::string yaml_to_string(const YAML::Node& node);

}  // namespace cairn
