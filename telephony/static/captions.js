// A live caption view: one line per final, and per leg one partial line that is replaced in place.

import { clock, el } from "./common.js";

export class CaptionView {
  constructor(container) {
    this.container = container;
    this.partials = new Map(); // leg_id -> element
    this.speakers = new Map(); // speaker -> colour index
  }

  _cls(speaker) {
    if (!this.speakers.has(speaker)) this.speakers.set(speaker, this.speakers.size % 4);
    return `speaker-${this.speakers.get(speaker)}`;
  }

  _line(kind, c) {
    return el("div", { class: `caption ${kind} ${this._cls(c.speaker)}`, "data-speaker": c.speaker, "data-leg": c.leg_id },
      el("span", { class: "at" }, clock(c.start_ms)), el("span", { class: "who" }, `${c.speaker}:`),
      el("span", { class: "text" }, c.text));
  }

  partial(c) {
    const line = this._line("partial", c);
    const old = this.partials.get(c.leg_id);
    if (old) old.replaceWith(line);
    else this.container.append(line);
    this.partials.set(c.leg_id, line);
  }

  final(c) {
    const line = this._line("final", c);
    const old = this.partials.get(c.leg_id);
    if (old) {
      old.replaceWith(line); // the final takes the partial's place
      this.partials.delete(c.leg_id);
    } else {
      this.container.append(line);
    }
  }

  clear() {
    this.container.replaceChildren();
    this.partials.clear();
  }
}
