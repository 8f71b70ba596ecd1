// `cairn report` with several runs: one page overlaying a sweep, checked as
// XML and as pixels of a real browser's rendering (headless Chromium).
#include "support.h"

#include <regex>

TEST_CASE("axis ticks are round numbers with only the decimals their spacing needs") {
  const auto t = cairn::nice_ticks(0.0, 0.04837, 5);
  REQUIRE(t.size() == 5);
  CHECK(t.front() == 0.0);
  CHECK(t[1] == doctest::Approx(0.01));
  CHECK(t.back() == doctest::Approx(0.04));
  CHECK(cairn::tick_label(t[3], t[1] - t[0]) == "0.03");
  const auto big = cairn::nice_ticks(0, 1234, 8);
  CHECK(big[1] - big[0] == 200);
  CHECK(cairn::tick_label(big.back(), 200) == "1200");
  const auto neg = cairn::nice_ticks(-1.0, 1.0, 4);
  REQUIRE(neg.size() == 5);
  CHECK(neg.front() == doctest::Approx(-1.0));
  CHECK(cairn::tick_label(neg[2], 0.5) == "0.0");  // not "-0.0" or "5.55e-17"
  CHECK(cairn::nice_ticks(-0.7, 2.3, 5) == std::vector<double>{0.0, 1.0, 2.0});
  CHECK(cairn::tick_label(1.5, 0.5) == "1.5");
  CHECK(cairn::nice_ticks(3, 3).size() == 1);  // a flat range does not loop
  // A spacing that floating point makes a hair short of round is still chosen.
  CHECK(cairn::nice_step(0.2, 1.2, 5) == doctest::Approx(0.2));
  CHECK(cairn::nice_step(0.0, 0.3, 3) == doctest::Approx(0.1));
}

TEST_CASE("cairn report overlays several runs: a colour and a legend entry per run, each run's best marked") {
  test::TempDir dir("report_multi");
  const std::string data = "data: {name: synthetic, train_size: 256, batch_size: 32}";
  std::vector<std::string> runs;
  for (const char* lr : {"0.002", "0.02"}) {
    const std::string run = std::string("lr") + lr;
    test::write_file(dir / (run + ".yaml"), test::small_config(dir / run, "", 3, 0, data));
    auto r = test::cairn_cli({"fit", "--config", dir / (run + ".yaml"), "--set", std::string("optimizer.lr=") + lr});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    runs.push_back(dir / run);
  }
  auto r = test::cairn_cli({"report", runs[0], runs[1], "--out", dir / "sweep.html"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);

  // As XML: per run, its series, its legend entry and its best marks.
  test::write_file(dir / "check.py",
                   "import sys, xml.etree.ElementTree as ET\n"
                   "root = ET.parse(sys.argv[1]).getroot()\n"
                   "svg, h = '{http://www.w3.org/2000/svg}', '{http://www.w3.org/1999/xhtml}'\n"
                   "charts = root.findall('.//' + svg + 'svg')\n"
                   "series = [e for c in charts for e in c if e.get('class') == 'series']\n"
                   "best = [e for c in charts for e in c.iter(svg + 'circle') if e.get('class') == 'best']\n"
                   "legend = [li for li in root.iter(h + 'li') if li.get('class') == 'run']\n"
                   "ticks = [t.text for c in charts for t in c.iter(svg + 'text') if (t.get('class') or '').startswith('tick ')]\n"
                   "for run in '01':\n"
                   "    print(run, sum(e.get('data-run') == run for e in series), sum(e.get('data-run') == run for e in best),\n"
                   "          len({e.get('stroke') or e.get('fill') for e in series if e.get('data-run') == run}))\n"
                   "print('legend', len(legend), *(li.text or '' for li in legend))\n"
                   "print('charts', len(charts))\n"
                   "print('ticks', *ticks)\n");
  auto p = test::run({CAIRN_PYTHON, dir / "check.py", dir / "sweep.html"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  std::istringstream is(p.output);
  std::string run;
  size_t series[2] = {0, 0}, best[2] = {0, 0}, colours[2] = {0, 0};
  for (int k = 0; k < 2; ++k) is >> run >> series[k] >> best[k] >> colours[k];
  const cairn::Value c0 = cairn::read_checkpoint(runs[0] + "/checkpoints/last.ckpt");
  const size_t metrics0 = c0.at("metrics").keys().size();
  CHECK(series[0] == metrics0);        // every metric of the run is drawn
  CHECK(series[1] == metrics0);        // same experiment, same metrics
  CHECK(best[0] >= 1);                 // valid/acc monitored by the checkpoint
  CHECK(best[1] >= 1);
  CHECK(colours[0] == 1);              // one colour per run
  CHECK(colours[1] == 1);
  CHECK(p.output.find("legend 2") != std::string::npos);
  // Tick labels are round: at most 3 decimals, no exponent.
  const std::string ticks = p.output.substr(p.output.find("ticks"));
  CHECK_MESSAGE(!std::regex_search(ticks, std::regex(R"(\d\.\d{4,}|e[-+]\d)")), ticks);
  CHECK(ticks.size() > 20);

  // As pixels: Chromium renders the page; each run's colour covers a real area.
  const std::string png = dir / "sweep.png";
  auto shot = test::run({"/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                         "--window-size=1000,1500", "--screenshot=" + png, "file://" + (dir / "sweep.html")});
  REQUIRE_MESSAGE(test::fs::exists(png), "chromium wrote no screenshot (exit " << shot.exit_code << "): " << shot.output);
  auto px = test::python("png_colours.py", {png, "1f77b4", "ff7f0e"});
  REQUIRE_MESSAGE(px.exit_code == 0, px.output);
  std::istringstream ps(px.output);
  long width = 0, height = 0, nonwhite = 0, run0 = 0, run1 = 0;
  ps >> width >> height >> nonwhite >> run0 >> run1;
  CHECK(width == 1000);
  CHECK(height == 1500);
  CHECK(nonwhite > 20000);  // text, axes and lines were drawn
  CHECK_MESSAGE(run0 > 300, px.output);  // run 0's lines (#1f77b4) are on screen
  CHECK_MESSAGE(run1 > 300, px.output);  // and run 1's (#ff7f0e)
}
