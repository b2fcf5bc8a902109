// p4bus dashboard: live fragments and the job's output. Text is only ever set with
// textContent / text nodes, never parsed as HTML (the server renders and escapes the fragments).
"use strict";

const MAX_LINES = 5000;        // lines kept in the page; earlier ones load on demand
const EARLIER_BYTES = 65536;   // what "load earlier" fetches at a time

// ---------------------------------------------------------------- live fragments
function liveFragment() {
  const box = document.getElementById("live");
  if (!box) return null;
  let pending = false, busy = false;
  async function refresh() {
    if (busy) { pending = true; return; }
    busy = true;
    try {
      const r = await fetch(box.dataset.src);
      if (r.ok) {
        // The fragment is server-rendered with autoescaping: its markup is ours, its text escaped.
        const tpl = document.createElement("template");
        tpl.innerHTML = await r.text();
        box.replaceChildren(tpl.content);
        bindConfirms(box);
      }
    } finally {
      busy = false;
      if (pending) { pending = false; setTimeout(refresh, 100); }
    }
  }
  if (box.dataset.on === "jobs" || box.dataset.on === "agents") {
    const es = new EventSource("/events");
    es.addEventListener(box.dataset.on, refresh);
    es.addEventListener("open", refresh); // after a reconnect: whatever changed meanwhile
  }
  if (box.dataset.every) setInterval(refresh, Number(box.dataset.every));
  return refresh;
}

function bindConfirms(root) {
  for (const f of root.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (e) => { if (!window.confirm(f.dataset.confirm)) e.preventDefault(); });
  }
}

// ---------------------------------------------------------------- the job's output
function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

class LogView {
  constructor(box, onJob) {
    this.box = box;
    this.onJob = onJob;
    this.status = document.getElementById("log-status");
    this.sections = new Map();  // cmd -> {el, pre, decoders, first: {1: offset}, head}
    this.nodes = [];            // [node, lines] oldest first, for trimming
    this.lines = 0;
    this.queue = [];
    this.scheduled = false;
    this.received = 0;          // ops applied
    this.resets = 0;            // snapshots taken: 1 unless a reconnect came too late for the server's ring
    this.lastId = null;
    this.connect();
  }

  connect() {
    this.es = new EventSource(this.box.dataset.events);
    this.es.onmessage = (e) => {
      this.lastId = e.lastEventId;
      this.queue.push(JSON.parse(e.data));
      if (!this.scheduled) {
        // Next frame; a hidden tab gets no frames, so a timer too: its queue never grows unbounded.
        this.scheduled = true;
        const once = () => { if (this.scheduled) this.flush(); };
        requestAnimationFrame(once);
        setTimeout(once, 250);
      }
    };
    this.es.onerror = () => { this.setStatus("connection lost; reconnecting where it stopped …"); };
    this.es.onopen = () => { this.setStatus(""); };
  }

  setStatus(text) { if (this.status) this.status.textContent = text; }

  // All messages that arrived since the last frame, at once: one layout per frame however
  // fast the output comes, and text beyond MAX_LINES never reaches the DOM.
  flush() {
    this.scheduled = false;
    const batch = this.queue; this.queue = [];
    const texts = [];  // [section, stream, text] in order
    let jobChanged = false;
    for (const ops of batch) {
      for (const op of ops) {
        this.received++;
        if (op.k === "reset") { this.reset(); texts.length = 0; }
        else if (op.k === "section") { this.section(op); jobChanged = true; }
        else if (op.k === "out") {
          const sec = this.section({ cmd: op.cmd });
          if (!(op.s in sec.first)) { sec.first[op.s] = op.o; this.earlierLink(sec, op.cmd); }
          // Bytes are placed by offset: any already shown (a message sent again) are dropped.
          let bytes = b64bytes(op.d);
          const next = sec.next[op.s] ?? op.o;
          if (op.o + bytes.length <= next) continue;
          if (op.o < next) bytes = bytes.subarray(next - op.o);
          sec.next[op.s] = Math.max(next, op.o) + bytes.length;
          const dec = sec.decoders[op.s] || (sec.decoders[op.s] = new TextDecoder("utf-8"));
          texts.push([sec, op.s, dec.decode(bytes, { stream: true })]);
        } else if (op.k === "done") { this.done(op); jobChanged = true; }
        else if (op.k === "note") this.note(op);
        else if (op.k === "job") jobChanged = true;
      }
    }
    this.append(texts);
    if (jobChanged && this.onJob) this.onJob();
  }

  reset() {
    this.resets++;
    this.box.replaceChildren();
    this.sections.clear();
    this.nodes = []; this.lines = 0;
  }

  section(op) {
    let sec = this.sections.get(op.cmd);
    if (sec) return sec;
    const el = document.createElement("section");
    el.className = "cmd"; el.dataset.cmd = op.cmd;
    const head = document.createElement("h3");
    head.textContent = op.stage ? `${op.stage}${op.step ? " step " + op.step : ""}${op.attempt > 1 ? " attempt " + op.attempt : ""}: ${op.argv.join(" ")}` : op.cmd;
    const pre = document.createElement("pre");
    el.append(head, pre);
    this.box.append(el);
    sec = { el, head, pre, decoders: {}, first: {}, next: {} };
    this.sections.set(op.cmd, sec);
    return sec;
  }

  append(texts) {
    let total = 0;
    for (const t of texts) total += countLines(t[2]);
    let skip = Math.max(0, total - MAX_LINES);  // whole lines that would be trimmed at once anyway
    for (const [sec, stream, text0] of texts) {
      let text = text0;
      if (skip > 0) {
        const n = countLines(text);
        if (n <= skip) { skip -= n; this.markTrimmed(sec); continue; }
        let i = -1;
        for (let k = 0; k < skip; k++) i = text.indexOf("\n", i + 1);
        text = text.slice(i + 1); skip = 0; this.markTrimmed(sec);
      }
      if (!text) continue;
      let node;
      if (stream === 2) { node = document.createElement("span"); node.className = "stderr"; node.textContent = text; }
      else node = document.createTextNode(text);
      sec.pre.append(node);
      const n = countLines(text);
      this.nodes.push([node, n, sec]); this.lines += n;
    }
    // Oldest lines first; a node holding more than the excess loses only its first lines (one
    // node may hold a whole burst, and the newest lines must stay).
    while (this.lines > MAX_LINES && this.nodes.length) {
      const entry = this.nodes[0];
      const [node, n, sec] = entry;
      const excess = this.lines - MAX_LINES;
      if (n <= excess) {
        node.remove(); this.nodes.shift(); this.lines -= n;
      } else {
        const text = node.textContent;
        let i = -1;
        for (let k = 0; k < excess; k++) i = text.indexOf("\n", i + 1);
        node.textContent = text.slice(i + 1);
        entry[1] = n - excess; this.lines -= excess;
      }
      this.markTrimmed(sec);
    }
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 200;
    if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  markTrimmed(sec) {
    if (sec.trimmed) return;
    sec.trimmed = document.createElement("p");
    sec.trimmed.className = "trimmed";
    sec.trimmed.textContent = "earlier lines are not kept in the page: ";
    const a = document.createElement("a");
    a.href = `/jobs/${this.box.dataset.job}/output/${sec.el.dataset.cmd}?stream=stdout`;
    a.textContent = "download this command's output";
    sec.trimmed.append(a);
    sec.el.insertBefore(sec.trimmed, sec.pre);
  }

  earlierLink(sec, cmd) {
    if (sec.earlier || !(sec.first[1] > 0)) return;
    const btn = document.createElement("button");
    btn.className = "link earlier";
    sec.earlier = btn;
    const label = () => { btn.textContent = `load earlier output (${sec.first[1]} bytes before)`; };
    label();
    btn.addEventListener("click", async () => {
      const from = Math.max(0, sec.first[1] - EARLIER_BYTES);
      const r = await fetch(`/jobs/${this.box.dataset.job}/output/${cmd}?stream=stdout&offset=${from}&size=${sec.first[1] - from}`);
      if (!r.ok) return;
      const text = new TextDecoder("utf-8").decode(new Uint8Array(await r.arrayBuffer()));
      sec.pre.insertBefore(document.createTextNode(text), sec.pre.firstChild);
      sec.first[1] = from;
      if (from === 0) btn.remove(); else label();
    });
    sec.el.insertBefore(btn, sec.pre);
  }

  done(op) {
    const sec = this.section({ cmd: op.cmd });
    if (sec.done) return;
    sec.done = true;
    const tag = document.createElement("span");
    tag.className = "exit";
    tag.textContent = op.error ? ` (could not start: ${op.error})` : ` (exit ${op.exit ?? "sig " + op.signal}, ${op.duration}s)`;
    sec.head.append(tag);
  }

  note(op) {
    const p = document.createElement("p");
    p.className = "note"; p.textContent = op.text;
    if (op.cmd) this.section({ cmd: op.cmd }).el.append(p); else this.box.append(p);
  }

  text() { return Array.from(this.sections.values(), (s) => s.pre.textContent).join(""); }
}

function countLines(s) {
  let n = 0, i = -1;
  while ((i = s.indexOf("\n", i + 1)) !== -1) n++;
  return n;
}

document.addEventListener("DOMContentLoaded", () => {
  bindConfirms(document);
  const refresh = liveFragment();
  const box = document.getElementById("log");
  if (box) window.p4busLog = new LogView(box, refresh);
});
