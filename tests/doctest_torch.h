// doctest for cairn's tests, included after LibTorch. c10's logging header
// (c10/util/logging_is_not_google_glog.h, in 1.13 and 2.x) defines a
// glog-style CHECK macro; the tests mean doctest's. Include this header, not
// <doctest/doctest.h>, so the two never meet (LibTorch 2.x builds warned
// "CHECK redefined" in every test file).
#pragma once

#include <c10/util/Logging.h>

#undef CHECK
#include <doctest/doctest.h>
