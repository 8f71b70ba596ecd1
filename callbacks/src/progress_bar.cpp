#include "cairn/callbacks/progress_bar.h"

#include "cairn/loop.h"
#include "cairn/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <sys/ioctl.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace cairn {

namespace {
std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}
}  // namespace

int ProgressBar::terminal_columns() const {
  // $COLUMNS first (what the user or a test set), then the terminal's own size.
  if (const char* c = std::getenv("COLUMNS")) {
    char* end = nullptr;
    const long v = std::strtol(c, &end, 10);
    if (end != c && *end == '\0' && v >= 20 && v <= 10000) return static_cast<int>(v);
  }
  struct winsize ws {};
  if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
  return 80;
}

ProgressBar::ProgressBar(ProgressBarOptions options, std::FILE* out)
    : options_(options), out_(out), tty_(::isatty(::fileno(out)) != 0) {}

std::string ProgressBar::metric_text(const Loop& loop, const char* split) const {
  std::string out;
  const std::string prefix = std::string(split) + "/";
  for (const auto& name : loop.metrics().names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, "_step") == 0) continue;
    char buf[96];
    std::snprintf(buf, sizeof buf, "  %s %.4f", name.c_str(), *loop.metrics().last(name));
    out += buf;
  }
  return out;
}

void ProgressBar::on_fit_begin(Loop& loop) {
  if (options_.model_summary && loop.model()) {
    std::fprintf(out_, "model:\n%s", model_summary(*loop.model()).c_str());
  }
  std::fflush(out_);
}

void ProgressBar::on_epoch_begin(Loop& loop) {
  epoch_start_ = last_draw_ = std::chrono::steady_clock::now();
  epoch_start_batch_ = loop.state().batch_in_epoch;
}

void ProgressBar::draw(Loop& loop, bool final) {
  const auto& st = loop.state();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
  const int64_t done = st.batch_in_epoch - epoch_start_batch_;
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const int64_t total = st.batches_per_epoch;
  const double eta = rate > 0 && total > 0 ? static_cast<double>(total - st.batch_in_epoch) / rate : NAN;
  char head[160];
  std::snprintf(head, sizeof head, "epoch %lld/%lld", static_cast<long long>(st.epoch + 1),
                static_cast<long long>(st.max_epochs));
  if (tty_) {
    // One line that never wraps (a wrapped line is left behind by every
    // refresh): fields are dropped, least useful first, to fit the terminal.
    const int columns = terminal_columns();
    char counter[64], speed[48], eta_text[48], loss[48];
    std::snprintf(counter, sizeof counter, "%lld/%lld", static_cast<long long>(st.batch_in_epoch),
                  static_cast<long long>(total));
    std::snprintf(speed, sizeof speed, "%.1f it/s", rate);
    std::snprintf(eta_text, sizeof eta_text, "ETA %s", clock_text(eta).c_str());
    std::snprintf(loss, sizeof loss, "loss %.4f", st.batch_loss);
    const int width = 24;
    const int fill = total > 0 ? static_cast<int>(width * st.batch_in_epoch / std::max<int64_t>(total, 1)) : 0;
    std::string bar(static_cast<size_t>(fill), '=');
    if (fill < width) bar += '>';
    bar.resize(width, ' ');
    bar = "[" + bar + "]";
    std::string valid = metric_text(loop, "valid");
    if (!valid.empty()) valid = valid.substr(1);  // its leading space is the separator below
    // (text, position on the line), most important first.
    const std::vector<std::pair<std::string, int>> fields{{head, 0},         {counter, 2},  {loss, 5},
                                                          {eta_text, 4},     {speed, 3},    {bar, 1},
                                                          {valid, 6}};
    std::vector<std::pair<int, std::string>> shown;
    int used = 0;
    for (const auto& f : fields) {
      if (f.first.empty()) continue;
      const int need = static_cast<int>(f.first.size()) + (shown.empty() ? 0 : 1);
      if (used + need > columns - 1) continue;  // the last column stays free: no auto-wrap
      used += need;
      shown.emplace_back(f.second, f.first);
    }
    std::sort(shown.begin(), shown.end());
    std::string line;
    for (const auto& f : shown) line += (line.empty() ? "" : " ") + f.second;
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    bar_open_ = !final;
  } else {
    std::fprintf(out_, "%s step %lld/%lld  %.1f it/s  ETA %s  loss %.4f\n", head,
                 static_cast<long long>(st.batch_in_epoch), static_cast<long long>(total), rate,
                 clock_text(eta).c_str(), st.batch_loss);
  }
  std::fflush(out_);
}

void ProgressBar::on_batch_end(Loop& loop) {
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (std::chrono::duration<double>(now - last_draw_).count() >= options_.refresh_seconds) {
      last_draw_ = now;
      draw(loop, false);
    }
  } else {
    const int64_t every = options_.log_every_n_steps > 0 ? options_.log_every_n_steps : loop.log_every_n_steps();
    if (every > 0 && !loop.state().accumulating && loop.state().global_step % every == 0) draw(loop, false);
  }
}

void ProgressBar::on_epoch_end(Loop& loop) {
  const auto& st = loop.state();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
  if (bar_open_) std::fputs("\r\033[K", out_);
  bar_open_ = false;
  std::fprintf(out_, "epoch %lld/%lld done in %.1f s%s%s\n", static_cast<long long>(st.epoch + 1),
               static_cast<long long>(st.max_epochs), elapsed, metric_text(loop, "train").c_str(),
               metric_text(loop, "valid").c_str());
  std::fflush(out_);
}

void ProgressBar::on_test_end(Loop& loop) {
  std::fprintf(out_, "test:%s\n", metric_text(loop, "test").c_str());
  std::fflush(out_);
}

void ProgressBar::on_fit_end(Loop& loop) {
  if (bar_open_) std::fputs("\n", out_);
  bar_open_ = false;
  const auto& stop = loop.state().stop;
  if (stop.requested) std::fprintf(out_, "stopped: %s\n", stop.reason.c_str());
  std::fflush(out_);
}

}  // namespace cairn
