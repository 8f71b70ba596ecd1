// Data parallelism in a hand-written loop: N processes, one model each, the
// gradients averaged over them after every (accumulated) step. With the same
// global batch, N processes end with the weights one process would reach.
//
// One process:   ./build/example_data_parallel OUT.ckpt EPOCHS BATCH [ACCUMULATE]
// Two processes (torchrun's variables; any free port):
//   for r in 0 1; do RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511
//     ./build/example_data_parallel OUT.ckpt EPOCHS BATCH & done; wait     (one line)
// BATCH is per process (as in Lightning): the global batch is BATCH x N.
// Rank 0 writes the final weights to OUT.ckpt (a torch.load-able state_dict).
// CAIRN_DIST_TIMEOUT_MS bounds every wait for a peer (default 60000).
#include <cairn/checkpoint_file.h>
#include <cairn/data.h>
#include <cairn/distributed.h>
#include <cairn/trainer.h>
#include <cairn/loop.h>

#include <torch/torch.h>

#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: example_data_parallel OUT.ckpt EPOCHS BATCH [ACCUMULATE]\n";
    return 2;
  }
  const std::string out = argv[1];
  const int64_t epochs = std::stoll(argv[2]), batch = std::stoll(argv[3]);
  const int64_t accumulate = argc > 4 ? std::stoll(argv[4]) : 1;
  cairn::set_threads(1);  // LibTorch and OpenBLAS: one thread each
  try {
    const cairn::DistEnv env = cairn::DistEnv::from_environment();
    const char* t = std::getenv("CAIRN_DIST_TIMEOUT_MS");
    const std::chrono::milliseconds timeout(t ? std::atol(t) : 60000);
    std::shared_ptr<cairn::ProcessGroup> group;
    if (env.distributed()) group = cairn::ProcessGroup::join(env, timeout);
    const int world = env.world_size, rank = env.rank;

    // The same data and the same initial weights everywhere (rank 0's, broadcast).
    auto gen = at::detail::createCPUGenerator(17);
    auto y = torch::randint(4, {1024}, gen, torch::kLong);
    auto x = torch::randn({4, 32}, gen).index_select(0, y) * 1.5 + torch::randn({1024, 32}, gen);
    const cairn::TensorDataset train{x, y};
    torch::manual_seed(5);
    auto model = torch::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::ReLU(), torch::nn::Linear(64, 4));
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    std::unique_ptr<cairn::GradientSync> sync;
    if (group) {
      group->broadcast_module(*model);
      sync = std::make_unique<cairn::GradientSync>(group, model->parameters(), /*bucket_bytes=*/4096);
    }

    // Each global batch of the epoch's (seed, epoch) order is split across the ranks.
    cairn::EpochSampler sampler(train.size(), batch * world, /*seed=*/3, /*shuffle=*/true, /*drop_last=*/true);
    for (int64_t epoch = 0; epoch < epochs; ++epoch) {
      double loss_sum = 0;
      for (int64_t k = 0; k < sampler.batches_per_epoch(); ++k) {
        const at::Tensor global = sampler.batch_indices(epoch, k);
        const at::Tensor mine = global.slice(0, rank * batch, (rank + 1) * batch);
        optimizer.zero_grad();
        for (int64_t a = 0; a < accumulate; ++a) {  // micro-batches: only the last one communicates
          const int64_t step = batch / accumulate;
          cairn::Batch b = train.gather(mine.slice(0, a * step, (a + 1) * step));
          auto loss = torch::cross_entropy_loss(model->forward(b.x), b.y) / static_cast<double>(accumulate);
          if (sync && a == accumulate - 1) sync->prepare_for_backward();
          loss.backward();
          loss_sum += loss.item<double>();
        }
        optimizer.step();
      }
      if (rank == 0) std::cout << "epoch " << epoch << " loss " << loss_sum / sampler.batches_per_epoch() << std::endl;
    }
    if (sync) std::cout << "rank " << rank << ": " << sync->buckets() << " gradient buckets\n";
    if (rank == 0) {
      cairn::Value root = cairn::Value::dict();
      root.set("state_dict", cairn::model_state(*model));
      root.set("world_size", static_cast<int64_t>(world));
      cairn::write_checkpoint(out, root);
      std::cout << "wrote " << out << "\n";
    }
    if (group) group->barrier();  // nobody leaves while a peer still needs it
  } catch (const cairn::DistributedError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 6;  // as cairn fit: a peer failed or did not answer in time
  }
  return 0;
}
