import { BaseFunction } from "klf:base";

// The design's package contract: cleans the series with another function of the mesh, then
// averages the last `window` values.
export default class MovingAverage extends BaseFunction {
  async onInitialize() {
    this.window = this.config.window;
  }

  async execute(input) {
    const clean = await this.ctx.call("series-cleaner", { xs: input.xs });
    const last = clean.xs.slice(-this.window);
    if (last.length === 0) {
      return { avg: null, n: 0 };
    }
    return { avg: last.reduce((a, b) => a + b, 0) / last.length, n: last.length };
  }
}
