import { BaseFunction } from "klf:base";

// Keeps the finite numbers of `xs`, in order, and says how many it dropped.
export default class SeriesCleaner extends BaseFunction {
  async execute(input) {
    if (!input || !Array.isArray(input.xs)) {
      throw new Error("input.xs must be an array of numbers");
    }
    const xs = input.xs.filter((x) => typeof x === "number" && Number.isFinite(x));
    return { xs, dropped: input.xs.length - xs.length };
  }
}
