"""The dashboard's stylesheet and its one script, served from /static (no CDN, no build step: the
dashboard works offline). The page's CSP allows scripts and styles from the dashboard itself
only, so nothing is inline."""

from __future__ import annotations

__all__ = ["CSS", "JS"]

CSS = """
:root{--fg:#1d2430;--mute:#5b6575;--line:#d9dee7;--ok:#2e8b57;--bad:#c0392b;--busy:#d68910;
--idle:#c9ced8;--tpu:#6c5ce7;--cpu:#3b82c4;--cloud:#e67e22;font-family:system-ui,sans-serif}
body{margin:0;color:var(--fg);background:#f6f7f9}
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;padding:.6rem 1rem;
background:#fff;
border-bottom:1px solid var(--line)}
header nav{display:flex;gap:.8rem;flex:1}header nav a{color:var(--mute);text-decoration:none}
header nav a.on{color:var(--fg);font-weight:600}
main{max-width:1200px;margin:0 auto;padding:1rem}
main.login{max-width:360px;margin-top:10vh}
.cards{display:flex;flex-wrap:wrap;gap:1rem}.card{background:#fff;border:1px solid var(--line);
border-radius:8px;padding:.8rem 1rem;flex:1 1 240px}.big{font-size:2rem;margin:.2rem 0}
table{border-collapse:collapse;width:100%;background:#fff}td,th{padding:.35rem .5rem;
border-bottom:1px solid var(--line);text-align:left;vertical-align:top}td.n{text-align:right}
.scroll{overflow-x:auto}
.pill{display:inline-block;padding:0 .5rem;border-radius:1rem;background:var(--idle);
font-size:.85rem}
.pill.online,.pill.running,.pill.completed{background:#d4efdf}
.pill.offline,.pill.aborted{background:#f5d5d0}
.pill.paused,.pill.stopped,.pill.due{background:#fbe7c6}
.pill.expired{background:#f5d5d0}.pill.ok{background:#d4efdf}
.banner{padding:.5rem .8rem;border-radius:.4rem;background:#fbe7c6}
.bar{display:block;height:.8rem;width:100%;min-width:120px;background:#eef0f4;
border-radius:4px}
.bar .ok{fill:var(--ok)}.bar .bad{fill:var(--bad)}.bar .busy{fill:var(--busy)}
.bar .idle{fill:var(--idle)}.bar .tpu{fill:var(--tpu)}.bar .cpu{fill:var(--cpu)}
.bar .cloud{fill:var(--cloud)}
article.rollout{background:#fff;border:1px solid var(--line);border-radius:8px;
padding:.2rem 1rem 1rem;
margin-bottom:1rem}
a.button,button{display:inline-block;padding:.4rem .9rem;border:1px solid var(--line);
border-radius:6px;
background:#fff;color:var(--fg);text-decoration:none;cursor:pointer;font:inherit}
button.danger{background:var(--bad);color:#fff;border-color:var(--bad)}
.empty,.hint{color:var(--mute)}.notice{background:#fff8e1;padding:.5rem 1rem;border-radius:6px}
.bad{color:var(--bad)}input{font:inherit;padding:.4rem;border:1px solid var(--line);
border-radius:6px}
label{display:block;margin:.8rem 0}form.search{display:flex;gap:.5rem;margin:.5rem 0}
figure.chart{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 1rem;
padding:.5rem}figure.chart svg{display:block;width:100%;height:auto}
.chart text{font-size:8px;fill:var(--mute)}.chart .axis{stroke:var(--line);stroke-width:.5}
.chart rect.cpu{fill:var(--cpu)}.chart rect.bad{fill:var(--bad)}
.chart rect.cloud{fill:var(--cloud)}.chart polyline{fill:none;stroke-width:1.5}
.chart .p95{stroke:var(--busy)}.chart .p50{stroke:var(--ok)}
figcaption{font-size:.85rem;color:var(--mute)}.k-cpu{color:var(--cpu)}.k-bad{color:var(--bad)}
.k-cloud{color:var(--cloud)}.k-p95{color:var(--busy)}.k-p50{color:var(--ok)}
header .who{color:var(--mute)}header form{margin:0}
select{font:inherit;padding:.4rem;border:1px solid var(--line);border-radius:6px;background:#fff}
form.action{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.5rem 1rem;
max-width:640px}form.action input,form.action select{width:100%;box-sizing:border-box}
.refused{background:#f5d5d0;padding:.5rem 1rem;border-radius:6px}
.token{font-family:monospace;word-break:break-all;background:#fff;border:1px solid var(--line);
padding:.5rem;border-radius:6px}
[data-stale]{opacity:.6}"""

JS = """
// Live updates without reloading: fetch this page's live part every few seconds (pages with a
// form, or an answer to one, have none). A notice above it stays.
(function () {
  var live = document.querySelector("[data-refresh]");
  if (!live) { return; }
  var seconds = Number(live.getAttribute("data-refresh")) || 5;
  function refresh() {
    if (document.activeElement && document.activeElement.tagName === "INPUT") { return; }
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url, {credentials: "same-origin", redirect: "manual"}).then(function (r) {
      if (r.ok && !r.redirected && r.type !== "opaqueredirect") { return r.text(); }
      throw new Error("HTTP " + r.status);
    }).then(function (html) { live.innerHTML = html; live.removeAttribute("data-stale"); })
      .catch(function () { live.setAttribute("data-stale", "1"); });
  }
  setInterval(refresh, seconds * 1000);
})();
"""
