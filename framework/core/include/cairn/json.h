// JSON text pieces, shared by every writer of JSON (the JSON-lines logger,
// `cairn inspect --json`, the HTML report's embedded data).
#pragma once

#include <string>
#include <string_view>

namespace cairn {
namespace json {

//! `s` as a JSON string literal, quotes included. Quotes, backslashes and
//! every control character (U+0000..U+001F, U+007F) are escaped; other bytes
//! pass through unchanged, so UTF-8 stays UTF-8. "</" is written "<\/" so the
//! text is also safe inside an HTML <script> element.
std::string quote(std::string_view s);

//! The shortest decimal text that reads back as exactly `v`; `null` for NaN
//! and infinities (JSON has no literal for them).
std::string number(double v);

//! The shortest round-trip text of `v` ("nan", "inf", "-inf" for non-finite
//! values): the CSV logger's and the report's number format.
std::string shortest(double v);

}  // namespace json
}  // namespace cairn
