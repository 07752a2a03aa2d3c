import { BaseFunction } from "klf:base";

export default class Hello extends BaseFunction {
  async execute(input) {
    return { message: `${this.config.greeting}, ${input.name ?? "world"}!` };
  }
}
