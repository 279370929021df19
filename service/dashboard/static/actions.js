// sensorcast dashboard: the ack and silence controls and full dates, used by app.js.
// They need the write scope: a 401/403 says so instead of failing silently.
"use strict";
window.sensorcastActions = ({ fetchOk, ApiError, encodeId, $, refresh }) => {
  // A time with its date, in the browser's locale; the year only when it is not this one
  // (replayed history from 2013 must not read as today). The ISO time is the tooltip.
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const opts = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" };
    if (d.getFullYear() !== new Date().getFullYear()) opts.year = "numeric";
    return d.toLocaleString(undefined, opts);
  }

  // What a click changed or why it could not (a read key cannot ack or silence).
  function actionMessage(text, isError) {
    const el = $("#action");
    el.textContent = text;
    el.className = isError ? "error" : "muted";
    el.hidden = !text;
  }

  // POST/PUT/DELETE from a button; 401/403 say that the write key is needed.
  async function act(path, method, body, done) {
    try {
      await fetchOk(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
      actionMessage(done, false);
      refresh(); // show the change now
    } catch (e) {
      const auth = e instanceof ApiError && (e.status === 401 || e.status === 403);
      actionMessage(auth ? `${done.split(":")[0]}: not allowed with this key (${e.status}); ` +
        "enter the write key (API key form above) to acknowledge alerts and silence streams"
        : `could not ${method} ${path}: ${e.message}`, true);
    }
  }

  // A silenced stream's alerts are recorded, not notified (PUT /v1/streams/{id}/silence):
  // a marker until when, and a button to silence it for an hour or end the silence.
  function silenceControl(s) {
    const url = `/v1/streams/${encodeId(s.id)}/silence`;
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "silence";
    if (s.silenced_until) {
      const mark = document.createElement("span");
      mark.className = "silenced";
      mark.textContent = `silenced until ${when(s.silenced_until)}`;
      mark.title = "alerts are recorded but not published or sent to webhooks";
      btn.textContent = "unsilence";
      btn.addEventListener("click", () => act(url, "DELETE", undefined, `unsilence ${s.id}: done`));
      return [mark, btn];
    }
    btn.textContent = "silence 1 h";
    const until = () => Math.floor(Date.now() / 1000) + 3600;
    btn.addEventListener("click", () => act(`${url}?until=${until()}`, "PUT", undefined, `silence ${s.id}: done`));
    return [btn];
  }

  // Acknowledged: by whom and when (the note as tooltip); a firing event not yet: a button.
  // A silenced stream's event says so: it was recorded, not notified.
  function ackCell(a) {
    const out = [];
    if (a.acked_at) {
      const done = document.createElement("span");
      done.className = "acked";
      done.textContent = `acked${a.acked_by ? ` by ${a.acked_by}` : ""}`;
      done.title = `${when(a.acked_at)}${a.ack_note ? `: ${a.ack_note}` : ""}`;
      out.push(done);
    } else if (a.state === "firing" && a.id !== null && a.id !== undefined) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "ack";
      btn.textContent = "Ack";
      btn.addEventListener("click", () => act(`/v1/alerts/${a.id}/ack`, "POST", { by: "dashboard" },
        `ack alert ${a.id}: done`));
      out.push(btn);
    }
    if (a.silenced) {
      const mark = document.createElement("span");
      mark.className = "silenced";
      mark.textContent = "silenced";
      mark.title = "the stream was silenced: recorded, not published or sent to webhooks";
      out.push(mark);
    }
    if (!out.length) out.push("–");
    return out;
  }

  return { when, silenceControl, ackCell };
};
