// SPDX-License-Identifier: Apache-2.0
// The reconnecting banner's state. It derives from when each channel entered `reconnecting` (the channel's
// status_since, or the status_changed event's time), never from individual events: retries inside one
// reconnecting spell do not reset it, and it clears only when the channel leaves `reconnecting`.

export interface BannerChannel {
  id: string;
  name: string;
  status: string;
  phoneNumber?: string;
  statusSince?: { seconds: bigint; nanos: number };
}

interface Spell {
  id: string;
  name: string;
  phoneNumber?: string;
  sinceMs: number;
  /** Once over the threshold the channel stays in the banner until it leaves `reconnecting`. */
  latched: boolean;
}

export class BannerTracker {
  private spells = new Map<string, Spell>();

  update(channels: BannerChannel[]) {
    const seen = new Set<string>();
    for (const c of channels) {
      if (c.status !== "reconnecting") continue;
      seen.add(c.id);
      const sinceMs = c.statusSince
        ? Number(c.statusSince.seconds) * 1000 + Math.floor(c.statusSince.nanos / 1e6)
        : Date.now();
      const s = this.spells.get(c.id);
      if (s) {
        s.name = c.name;
        s.phoneNumber = c.phoneNumber;
        // The earliest known start of this spell wins; a later timestamp for the same spell never resets it.
        s.sinceMs = Math.min(s.sinceMs, sinceMs);
      } else {
        this.spells.set(c.id, { id: c.id, name: c.name, phoneNumber: c.phoneNumber, sinceMs, latched: false });
      }
    }
    for (const id of [...this.spells.keys()]) if (!seen.has(id)) this.spells.delete(id);
  }

  /** Channels to show, oldest spell first. */
  shown(nowMs: number, thresholdMs: number): Spell[] {
    const out: Spell[] = [];
    for (const s of this.spells.values()) {
      if (!s.latched && nowMs - s.sinceMs >= thresholdMs) s.latched = true;
      if (s.latched) out.push(s);
    }
    return out.sort((a, b) => a.sinceMs - b.sinceMs || (a.id < b.id ? -1 : 1));
  }

  reset() {
    this.spells.clear();
  }
}
