#include "cairn/callbacks/checkpoint.h"

#include "cairn/checkpoint_file.h"
#include "cairn/distributed.h"
#include "cairn/loop.h"
#include "cairn/run_checkpoint.h"
#include "cairn/run_dir.h"
#include "cairn/run_lock.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <unistd.h>

namespace cairn {

namespace fs = std::filesystem;

namespace {
std::string sanitize(std::string s) {
  for (char& c : s) {
    if (c == '/' || c == '\\' || c == '\0') c = '_';
  }
  return s;
}

std::string format_number(double v, const std::string& spec) {
  // spec like ".4f", ".3e", ".6g" or "" (shortest).
  if (spec.empty()) {
    std::ostringstream os;
    os.precision(6);
    os << v;
    return os.str();
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, ("%" + spec).c_str(), v);
  return buf;
}

bool valid_spec(const std::string& spec) {
  if (spec.empty()) return true;
  if (spec.size() < 2 || spec[0] != '.') return false;
  for (size_t i = 1; i + 1 < spec.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(spec[i]))) return false;
  }
  const char t = spec.back();
  return t == 'f' || t == 'e' || t == 'g';
}
}  // namespace

Checkpoint::Checkpoint(CheckpointOptions options) : options_(std::move(options)) {
  if (options_.save_top_k() < -1) throw std::invalid_argument("save_top_k must be >= -1");
  if (options_.every_n_train_steps() < 0 || options_.every_n_epochs() < 0) {
    throw std::invalid_argument("every_n_train_steps and every_n_epochs must be >= 0");
  }
  if (options_.on_error() != "warn" && options_.on_error() != "stop") {
    throw std::invalid_argument("on_error must be 'warn' or 'stop'");
  }
  if (options_.on_busy() != "wait" && options_.on_busy() != "skip") {
    throw std::invalid_argument("on_busy must be 'wait' or 'skip'");
  }
  if (options_.filename().empty()) options_.filename(default_checkpoint_filename(options_.monitor()));
  // Check the template now rather than at the first save.
  for (size_t i = options_.filename().find('{'); i != std::string::npos; i = options_.filename().find('{', i + 1)) {
    const size_t close = options_.filename().find('}', i);
    if (close == std::string::npos) throw std::invalid_argument("filename template has an unclosed '{'");
    const std::string field = options_.filename().substr(i + 1, close - i - 1);
    const size_t colon = field.find(':');
    if (colon != std::string::npos && !valid_spec(field.substr(colon + 1))) {
      throw std::invalid_argument("filename field {" + field + "}: format must look like .4f, .3e or .6g");
    }
  }
  last_save_time_ = std::chrono::steady_clock::now();
}

Checkpoint::~Checkpoint() {
  if (writer_.pending()) {
    if (std::exception_ptr e = writer_.wait()) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        std::cerr << "cairn: warning: checkpoint not saved: " << ex.what() << "\n";
      }
    }
  }
}

std::string Checkpoint::key() const {
  // What the instance tracks (its monitor and mode), not how often it saves:
  // a resume with another cadence keeps its top-k list and best model.
  return "Checkpoint{monitor=" + (options_.monitor().empty() ? std::string("None") : options_.monitor()) +
         ",mode=" + mode_name(options_.mode()) + "}";
}

bool Checkpoint::claims(const std::string& saved_key) const {
  if (saved_key == key()) return true;
  // cairn <= 0.1 keys also named the cadence: "Checkpoint{monitor=M,mode=X,every_n_train_steps=..."
  const std::string stem = key().substr(0, key().size() - 1) + ",every_n_train_steps=";
  return saved_key.compare(0, stem.size(), stem) == 0;
}

void Checkpoint::resolve_dir(const Loop& loop) {
  if (!dirpath_.empty()) return;
  dirpath_ = checkpoint_dir(loop);
  // Saved relative to the run folder when inside it: a copied or moved run names its own folder.
  std::error_code ec;
  const fs::path rel = fs::relative(dirpath_, loop.run_dir().empty() ? "." : loop.run_dir(), ec);
  saved_dirpath_ = !ec && !rel.empty() && *rel.begin() != ".." ? rel.string() : fs::absolute(dirpath_, ec).string();
}

namespace {
//! How a run's state names one of its checkpoint files: by its name in the
//! checkpoint folder, so that a copied or moved run folder names its own
//! files (and never the original's, which retention would then delete).
std::string kept_name(const std::string& path) { return path.empty() ? path : fs::path(path).filename().string(); }
}  // namespace

void Checkpoint::rebase_book(bool own_folder) {
  if (!own_folder) {  // never delete or choose a file of this folder by another folder's name
    const int64_t seen = book_.seen;
    book_ = Book();
    book_.seen = seen;
    return;
  }
  // Names from the saved state (or full paths, in files of cairn <= 0.1) are
  // this run's files: in its checkpoint folder, wherever that is now.
  auto here = [&](const std::string& p) { return p.empty() ? p : (fs::path(dirpath_) / kept_name(p)).string(); };
  book_.best_path = here(book_.best_path);
  book_.last_path = here(book_.last_path);
  for (auto& p : book_.newest) p = here(p);
  std::map<std::string, double> k;
  for (const auto& kv : book_.best_k) k[here(kv.first)] = kv.second;
  book_.best_k = std::move(k);
}

std::string default_checkpoint_filename(const std::string& monitor) {
  std::string f = "epoch={epoch}-step={step}";
  if (!monitor.empty()) f += "-" + sanitize(monitor) + "={" + monitor + ":.4f}";
  return f;
}

std::string Checkpoint::checkpoint_dir(const Loop& loop) const {
  if (!dirpath_.empty()) return dirpath_;
  if (!options_.dirpath().empty()) return options_.dirpath();
  return (fs::path(loop.run_dir().empty() ? "." : loop.run_dir()) / "checkpoints").string();
}

void Checkpoint::on_fit_begin(Loop& loop) {
  resolve_dir(loop);
  std::error_code ec;
  fs::create_directories(dirpath_, ec);
  {
    // The book names files of the folder the resumed file is in: this run's
    // when that is its own checkpoint folder (a copied or moved run too).
    // A folder outside the run is saved as an absolute path: that same folder is its own too.
    const ResumeInfo& from = loop.resume_info();
    std::error_code same;
    const fs::path from_dir = fs::path(from.path).parent_path();
    const bool own = !from.resumed || fs::equivalent(from_dir.empty() ? fs::path(".") : from_dir, dirpath_, same) ||
                     (fs::path(loaded_dirpath_).is_absolute() && fs::equivalent(loaded_dirpath_, dirpath_, same));
    if (!own && (!book_.best_k.empty() || !book_.newest.empty() || !book_.best_path.empty())) {
      std::cerr << "cairn: note: resumed from a file outside " << dirpath_
                << ": its top-k list names another folder's files; this run's starts afresh here\n";
    }
    rebase_book(own);
  }
  lock_for_fit(loop, dirpath_);  // throws RunLocked when another process trains here
  owns_dir_ = true;
  // Temp files whose writer is gone are garbage: the rename never happened.
  // (A live writer's are left alone; with the lock held there should be none.)
  if (!writer_.pending()) {
    for (const auto& e : fs::directory_iterator(dirpath_, ec)) {
      if (e.path().extension() == ".tmp" && temp_file_is_stale(e.path().string(), /*include_self=*/true)) {
        fs::remove(e.path(), ec);
      }
    }
  }
  // What is durable now: the file this run resumed from, when it is ours.
  const ResumeInfo& ri = loop.resume_info();
  const std::string last = (fs::path(dirpath_) / "last.ckpt").string();
  if (ri.resumed) {
    durable_path_ = ri.path;
    durable_step_ = ri.global_step;
    if (fs::equivalent(ri.path, last, ec)) last_good_ = true;
  }
  last_save_time_ = std::chrono::steady_clock::now();
}

std::string Checkpoint::durable_text() const {
  if (durable_path_.empty()) return "there is no durable checkpoint of this run yet";
  return "the newest durable checkpoint is " + durable_path_ + " (global step " + std::to_string(durable_step_) + ")";
}

std::string Checkpoint::format_filename(const Loop& loop) const {
  const std::string& t = options_.filename();
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t[i] != '{') {
      out += t[i++];
      continue;
    }
    const size_t close = t.find('}', i);
    std::string field = t.substr(i + 1, close - i - 1);
    std::string spec;
    const size_t colon = field.find(':');
    if (colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    if (field == "epoch") {
      out += std::to_string(loop.state().epoch);
    } else if (field == "step") {
      out += std::to_string(loop.state().global_step);
    } else if (auto v = loop.metrics().last(field)) {
      out += format_number(*v, spec);
    } else {
      out += "nan";
    }
    i = close + 1;
  }
  return sanitize(out);
}

void Checkpoint::on_batch_end(Loop& loop) {
  if (writer_.pending() && !writer_.busy()) wait_for_pending(loop);  // report a finished write promptly
  const bool distributed = loop.world_size() > 1;
  if (options_.async_save() && !reserved_ && (distributed || !writer_.pending()) && !loop.state().accumulating) {
    // After the first optimizer step every tensor a checkpoint holds exists (optimizer
    // state included): allocate the snapshot buffers now, in the background, so the
    // first save blocks training no longer than the later ones.
    reserved_ = true;
    if (!loop.is_rank_zero()) {
      (void)loop.make_checkpoint(/*emit_event=*/false);  // a collective: rank 0 gathers every rank's RNG state
      return on_batch_end_due(loop);
    }
    wait_for_pending(loop);
    job_is_save_ = false;
    auto slots = StateSnapshot::layout(loop.make_checkpoint(/*emit_event=*/false));
    writer_.submit([this, slots = std::move(slots)] { snapshot_.reserve(slots); });
  }
  on_batch_end_due(loop);
}

bool Checkpoint::needs_batch_loss(const Loop& loop) const {
  // The steps it may save at: TerminateOnNaN (which runs before it) must see
  // this step's loss, so a NaN state never replaces the last good file.
  const auto& st = loop.state();
  if (options_.every_n_train_steps() > 0 && st.global_step % options_.every_n_train_steps() == 0) return true;
  if (options_.train_time_interval() > 0) {
    time_decided_step_ = st.global_step;
    time_decided_due_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_time_).count() >=
                        options_.train_time_interval();
    if (time_decided_due_) return true;
  }
  return due_;
}

void Checkpoint::on_batch_end_due(Loop& loop) {
  const bool stepped = !loop.state().accumulating;  // this batch ended with an optimizer step
  bool due = stepped && options_.every_n_train_steps() > 0 &&
             loop.state().global_step % options_.every_n_train_steps() == 0;
  if (!due && options_.train_time_interval() > 0) {
    // The decision needs_batch_loss() made for this step (its loss was read
    // for it); when it was not asked, the loss was read anyway (a log point).
    bool elapsed_due = false;
    if (time_decided_step_ == loop.state().global_step) {
      elapsed_due = time_decided_due_;
      time_decided_step_ = -1;  // used once (mid-accumulation batches repeat the step number)
    } else {
      elapsed_due = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_time_).count() >=
                    options_.train_time_interval();
    }
    // Clocks differ between processes: rank 0's decides, so that all ranks save together.
    due = loop.rank_zero_decides(elapsed_due);
  }
  // Mid gradient-accumulation the state is not a resume point: save at the cycle's end.
  due_ = due_ || due;
  if (due_ && !loop.state().accumulating) {
    due_ = false;
    save(loop);
  }
}

void Checkpoint::on_validation_end(Loop& loop) {
  const auto& st = loop.state();
  const bool inside_epoch = st.stage == Stage::validate && st.batches_per_epoch > 0 && st.batch_in_epoch > 0 &&
                            st.batch_in_epoch < st.batches_per_epoch && !st.epoch_finished;
  if (!inside_epoch || options_.monitor().empty() || loop.evaluating_loaded_weights()) return;
  // A save at this step's batch_end (every_n_train_steps) came before the
  // validation: this state holds its scores, so it is not "already on disk".
  if (last_saved_step_ == st.global_step && !last_saved_epoch_end_) last_saved_step_ = -1;
  save(loop);
}

void Checkpoint::on_epoch_end(Loop& loop) {
  if (options_.every_n_epochs() > 0 && (loop.state().epoch + 1) % options_.every_n_epochs() == 0) save(loop);
}

void Checkpoint::on_fit_end(Loop& loop) {
  // An interrupted run saves where it stopped; a finished one records that it finished.
  // Either way nothing is left in flight when fit() returns, and a failure is loud.
  bool ok = true;
  if (loop.state().stop.interrupt || loop.state().finished) ok = save(loop, /*force_last_only=*/true);
  ok = wait_for_pending(loop) && ok;
  if (!ok && !last_error_.empty()) report_failure(loop, last_error_);
}

void Checkpoint::report_failure(Loop& loop, const std::string& what) {
  std::string& slot = loop.state().final_save_error;
  if (!slot.empty()) return;  // the first failing saver's message stands
  slot = "the run's final checkpoint was not saved (" + what + "); " + durable_text();
  std::cerr << "cairn: error: " << slot << "\n";
}

std::string Checkpoint::best_checkpoint(Loop& loop) {
  wait_for_pending(loop);  // a failed write rolls the book back to a file that is on disk
  return book_.best_path;
}

void Checkpoint::on_exception(Loop& loop) {
  resolve_dir(loop);
  const auto& st = loop.state();
  if (!owns_dir_) {
    // Refused the folder (another process trains there), or never started:
    // its files are not this run's to write.
    std::cerr << "cairn: nothing saved to " << dirpath_ << ": this process does not own it\n";
    return;
  }
  if (loop.world_size() > 1) {
    // The other ranks may not be able to take part in a save any more (one of
    // them may be the reason): keep what is on disk.
    wait_for_pending(loop);
    if (loop.is_rank_zero()) {
      std::cerr << "cairn: a step threw in a run of " << loop.world_size() << " processes; " << durable_text()
                << ": a resume continues from there\n";
    }
    return;
  }
  if (st.dirty || !options_.save_on_exception()) {
    wait_for_pending(loop);
    std::cerr << "cairn: a step threw"
              << (st.dirty ? " in the middle of an optimizer step (that state cannot be saved)" : "")
              << "; " << durable_text() << ": a resume continues from there\n";
    return;
  }
  try {
    std::cerr << "cairn: a step threw; saving the state of the last batch boundary ("
              << describe_position(st.resume_epoch(), st.resume_batch(), st.global_step) << ") to "
              << (fs::path(dirpath_) / "last.ckpt").string() << "\n";
    if (save(loop, /*force_last_only=*/true) && wait_for_pending(loop)) {
      std::cerr << "cairn: a resume continues from global step " << st.global_step << "\n";
    } else {
      report_failure(loop, last_error_.empty() ? "the save after the exception failed" : last_error_);
    }
  } catch (const std::exception& e) {
    report_failure(loop, e.what());
  }
}

bool Checkpoint::save(Loop& loop, bool force_last_only) {
  resolve_dir(loop);
  const auto& st = loop.state();
  last_error_.clear();
  if (st.dirty) {
    wait_for_pending(loop);
    return false;
  }
  if (st.invalid_state) {
    if (!warned_invalid_) {
      std::cerr << "cairn: warning: not saving a checkpoint of an invalid state (" << st.stop.reason
                << "); the last good files are kept\n";
    }
    warned_invalid_ = true;
    wait_for_pending(loop);
    return false;
  }
  bool skip = job_is_save_ && writer_.busy() && !force_last_only && options_.on_busy() == "skip";
  // Only rank 0 writes: its writer decides for every rank.
  if (loop.world_size() > 1 && !force_last_only && options_.on_busy() == "skip") skip = loop.rank_zero_decides(skip);
  if (skip) {
    ++skipped_saves_;
    std::cerr << "cairn: warning: skipping the checkpoint at step " << st.global_step
              << ": the previous one is still being written (on_busy: skip)\n";
    return false;
  }
  // At most one write in flight: settle it before deciding anything new.
  wait_for_pending(loop);
  agree_on_book(loop);
  if (!force_last_only && st.global_step == last_saved_step_ && st.epoch_finished == last_saved_epoch_end_) {
    return true;  // this exact state is already on disk
  }
  const bool keep_last = options_.save_last() || force_last_only;

  // Decide the top-k change before writing; commit it only once the file is durable.
  std::string topk_file;
  std::vector<std::string> to_delete;
  Book planned = book_;
  if (!force_last_only) {
    const Retention retention(options_.save_top_k(), options_.mode(), options_.min_delta(), !options_.monitor().empty());
    const std::string path = (fs::path(dirpath_) / (format_filename(loop) + ".ckpt")).string();
    const auto count = options_.monitor().empty() ? int64_t{0}
                                                  : static_cast<int64_t>(loop.metrics().count(options_.monitor()));
    const auto value = options_.monitor().empty() ? std::nullopt : loop.metrics().last(options_.monitor());
    RetentionPlan plan = retention.plan(planned, path, value, count);
    topk_file = plan.file;
    to_delete = std::move(plan.drop);
    planned = std::move(plan.next);
  }
  if (topk_file.empty() && !keep_last) return true;

  const std::string last = (fs::path(dirpath_) / "last.ckpt").string();
  const std::string primary = topk_file.empty() ? last : topk_file;

  // Commit the tentative bookkeeping so the saved state includes this file.
  const Book old = book_;
  book_ = std::move(planned);
  book_.last_path = primary;
  const auto t0 = std::chrono::steady_clock::now();
  const bool background = options_.async_save() && !force_last_only;
  if (!loop.is_rank_zero()) {
    // The other ranks take part in assembling it (every rank's RNG state) and write nothing.
    (void)loop.make_checkpoint();
    last_saved_step_ = st.global_step;
    last_saved_epoch_end_ = st.epoch_finished;
    last_save_time_ = std::chrono::steady_clock::now();
    return true;
  }
  try {
    Value ckpt = loop.make_checkpoint();
    if (options_.save_weights_only()) ckpt = run_checkpoint::weights_only(ckpt);
    if (background) {
      // Phase 1 (blocking): copy the tensors into host buffers. Phase 2: write in the background.
      Value snap = snapshot_.take(ckpt);
      ckpt = Value();
      before_pending_ = old;
      job_is_save_ = true;
      pending_path_ = keep_last ? last : primary;
      pending_step_ = st.global_step;
      writer_.submit([this, snap = std::move(snap), primary, keep_last, to_delete]() {
        write_files(snap, primary, keep_last, to_delete);
      });
    } else {
      write_files(ckpt, primary, keep_last, to_delete);
      last_save_seconds_ = pending_write_seconds_;
      last_save_bytes_ = pending_write_bytes_;
      durable_path_ = keep_last ? last : primary;
      durable_step_ = st.global_step;
    }
  } catch (const std::exception& e) {
    book_ = old;
    last_error_ = e.what();
    std::cerr << "cairn: warning: checkpoint not saved: " << e.what() << "\n";
    if (options_.on_error() == "stop") {
      loop.state().request_stop(std::string("checkpoint write failed: ") + e.what());
    }
    return false;
  }
  last_blocking_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  last_saved_step_ = st.global_step;
  last_saved_epoch_end_ = st.epoch_finished;
  last_save_time_ = std::chrono::steady_clock::now();
  return true;
}

void Checkpoint::write_files(const Value& ckpt, const std::string& primary, bool keep_last,
                             const std::vector<std::string>& to_delete) {
  const std::string last = (fs::path(dirpath_) / "last.ckpt").string();
  std::error_code ec;
  // Only a last.ckpt known to be good becomes the fallback: a damaged or
  // foreign one is overwritten below, and the existing last.prev stays.
  if (keep_last && last_good_ && fs::exists(last, ec)) atomic_link(last, (fs::path(dirpath_) / "last.prev.ckpt").string());
  // A full disk fails the write here, before anything is deleted: the files
  // retention would drop stay until their replacement is durable (freeing
  // them first lost the only checkpoint when the retry failed too).
  const WriteStats stats = write_checkpoint(primary, ckpt);
  // last.ckpt and the top-k list change only once the new file is durable.
  if (keep_last && primary != last) atomic_link(primary, last);
  if (keep_last) last_good_ = true;
  for (const auto& f : to_delete) {
    // The new file is durable: a file retention drops and cannot delete costs
    // only disk space, so the save stands and the failure is said.
    if (f != primary && !fs::remove(f, ec) && ec) {
      std::cerr << "cairn: warning: could not delete " << f << ", which retention dropped: " << ec.message() << "\n";
    }
  }
  pending_write_seconds_ = stats.seconds;
  pending_write_bytes_ = stats.bytes;
}

bool Checkpoint::wait_for_pending(Loop& loop) {
  if (!writer_.pending()) return true;
  std::exception_ptr e = writer_.wait();
  settle(loop, e);
  return e == nullptr;
}

void Checkpoint::settle(Loop& loop, std::exception_ptr error) {
  if (!job_is_save_) {  // the buffer reservation: nothing to settle; a failure only costs speed
    return;
  }
  job_is_save_ = false;
  if (!error) {
    last_save_seconds_ = pending_write_seconds_;
    last_save_bytes_ = pending_write_bytes_;
    durable_path_ = pending_path_;
    durable_step_ = pending_step_;
    return;
  }
  book_ = before_pending_;
  last_saved_step_ = -1;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    last_error_ = e.what();
    std::cerr << "cairn: warning: checkpoint not saved: " << e.what() << "\n";
    if (options_.on_error() == "stop") loop.state().request_stop(std::string("checkpoint write failed: ") + e.what());
  }
}

void Checkpoint::agree_on_book(Loop& loop) {
  if (loop.world_size() <= 1) return;
  // "<last saved step> <at epoch end> <book>": rank 0's, on every rank.
  const std::string mine =
      std::to_string(last_saved_step_) + " " + (last_saved_epoch_end_ ? "1" : "0") + " " + book_.encode();
  const std::string agreed = loop.process_group()->broadcast_bytes(mine, 0);
  if (loop.is_rank_zero()) return;
  const size_t a = agreed.find(' '), b = agreed.find(' ', a + 1);
  last_saved_step_ = std::stoll(agreed.substr(0, a));
  last_saved_epoch_end_ = agreed.at(a + 1) == '1';
  book_ = Book::decode(agreed.substr(b + 1));
}

Value Checkpoint::state_dict() const {
  Value d = Value::dict();
  d.set("monitor", options_.monitor().empty() ? Value() : Value(options_.monitor()));
  d.set("mode", mode_name(options_.mode()));
  d.set("dirpath", saved_dirpath_.empty() ? dirpath_ : saved_dirpath_);
  d.set("best_model_path", kept_name(book_.best_path));
  d.set("best_model_score", book_.best_score ? Value(*book_.best_score) : Value());
  Value k = Value::dict();
  for (const auto& kv : book_.best_k) k.set(kept_name(kv.first), kv.second);
  d.set("best_k_models", std::move(k));
  std::vector<std::string> newest;
  for (const auto& p : book_.newest) newest.push_back(kept_name(p));
  d.set("newest_paths", Value(newest));
  d.set("last_model_path", kept_name(book_.last_path));
  d.set("monitor_values_seen", book_.seen);
  if (!options_.monitor().empty()) {
    d.set("summary", run_checkpoint::summary(options_.monitor(), mode_name(options_.mode()), book_.best_score,
                                             kept_name(book_.best_path)));
  }
  return d;
}

void Checkpoint::load_state_dict(const Value& s) {
  const Value* dir = s.find("dirpath");
  loaded_dirpath_ = dir && dir->is_string() ? dir->to_string() : "";
  book_.best_path = s.at("best_model_path").to_string();
  const Value& score = s.at("best_model_score");
  book_.best_score = score.is_none() ? std::nullopt : std::optional<double>(score.to_double());
  book_.best_k.clear();
  const Value& k = s.at("best_k_models");
  for (size_t i = 0; i < k.keys().size(); ++i) book_.best_k[k.keys()[i].to_string()] = k.values()[i].to_double();
  book_.newest.clear();
  for (const auto& p : s.at("newest_paths").items()) book_.newest.push_back(p.to_string());
  book_.last_path = s.at("last_model_path").to_string();
  book_.seen = s.at("monitor_values_seen").to_int();
}

}  // namespace cairn
