"""vLLM's MoE token permute and unpermute, per vLLM commit: warm and cold L2.

Declarations only; ``moebench.suite`` does the work. The suite's one ``setup_cache`` (defined once
below, so asv runs it once for both classes) measures the whole grid, both L2 modes: CUDA graphs,
the correctness gate, every GPU through Ray when there are several. Every parameter combination's
own process then only looks its point up: it does no CUDA work, so asv's forkserver starts it
cheaply. ``setup`` skips (NaN) a combination that cannot run at this commit or on this device, and
fails one that ran without a trustworthy number. There is no ``teardown``: the combination
processes hold no GPU memory, and ``setup_cache``'s process releases each point's buffers and
graphs before the next one and exits when the grid is done.

Every ``track_*`` returns one sample per independent round ({"samples": [...], "number": 1}): a
round is a measurement with its own buffers and CUDA graph, its value the mean of its middle half
of replays. asv's median is the point's value, and its confidence interval, Mann-Whitney in
``asv compare`` and weighted step detection see the noise between rounds.
Times are seconds (lower is better); ``*_vs_floor`` is time over the roofline floor (bytes moved
at the measured copy bandwidth; 1.0 = at the floor). Parameters: ``MOEBENCH_*`` variables
(``moebench.suite``).
"""

try:
    from moebench import suite, suitegrid
except ImportError:  # run from a checkout where moebench is not installed (asv "existing" env)
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))
    from moebench import suite, suitegrid

CONFIG = suite.SuiteConfig.from_env()


class _Grid:
    param_names = list(suite.PARAM_NAMES)
    version = suite.RECIPE_VERSION
    l2: str

    def setup_cache(self):
        return suitegrid.PackedGrid(suite.setup_grid(CONFIG))

    def setup(self, grid, model, dtype, impl, tokens):
        self.point = suitegrid.lookup(grid, self.l2, model, dtype, impl, tokens)

    def track_permute(self, grid, model, dtype, impl, tokens):
        return self.point.op("permute").timing()

    def track_unpermute(self, grid, model, dtype, impl, tokens):
        return self.point.op("unpermute").timing()

    def track_permute_vs_floor(self, grid, model, dtype, impl, tokens):
        return self.point.op("permute").vs_floor()

    def track_unpermute_vs_floor(self, grid, model, dtype, impl, tokens):
        return self.point.op("unpermute").vs_floor()

    track_permute.unit = track_unpermute.unit = "seconds"
    track_permute_vs_floor.unit = track_unpermute_vs_floor.unit = "x floor"


# A class exists only for the L2 modes this run measures (MOEBENCH_L2): a deselected class would
# still cost asv one process per parameter combination just to report n/a.
if "warm" in CONFIG.l2_modes:

    class WarmL2(_Grid):
        """The seed's recipe: 10 calls per CUDA graph, caches warm from the previous call."""

        l2 = "warm"
        params = CONFIG.params_for(l2)


if "cold" in CONFIG.l2_modes:

    class ColdL2(_Grid):
        """A buffer twice the L2 size is overwritten before every replay (outside the timed
        region); one call per graph, so every timed call meets a cold L2."""

        l2 = "cold"
        params = CONFIG.params_for(l2)
