#include "cairn/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace cairn {
namespace json {

std::string quote(std::string_view s) {
  std::string o;
  o.reserve(s.size() + 2);
  o += '"';
  char prev = 0;
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      case '/': o += prev == '<' ? "\\/" : "/"; break;
      default: {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(u));
          o += buf;
        } else {
          o += c;
        }
      }
    }
    prev = c;
  }
  o += '"';
  return o;
}

std::string shortest(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string number(double v) { return std::isfinite(v) ? shortest(v) : std::string("null"); }

}  // namespace json
}  // namespace cairn
