// Line plots on a canvas: series [{label, colour, points: [[x, y], ...]}], x in seconds.
export function plot(canvas, series, { unit = "", min, max } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 420, height = canvas.clientHeight || 140;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const points = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  g.font = "11px system-ui, sans-serif";
  if (!points.length) {
    g.fillStyle = "#9aa1b1";
    g.fillText("no samples", 10, height / 2);
    return;
  }
  const x0 = Math.min(...points.map((p) => p[0])), x1 = Math.max(...points.map((p) => p[0]), x0 + 1);
  let y0 = min ?? Math.min(...points.map((p) => p[1])), y1 = max ?? Math.max(...points.map((p) => p[1]));
  if (y1 - y0 < 1e-9) { y1 = y0 + 1; }
  const pad = { l: 46, r: 10, t: 16, b: 18 };
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  g.strokeStyle = "#e3e6ec"; g.fillStyle = "#6b7385";
  for (let i = 0; i <= 3; i++) {
    const y = y0 + ((y1 - y0) * i) / 3;
    g.beginPath(); g.moveTo(pad.l, Y(y)); g.lineTo(width - pad.r, Y(y)); g.stroke();
    g.fillText(`${+y.toFixed(Math.abs(y1 - y0) < 10 ? 2 : 0)}${unit}`, 2, Y(y) + 4);
  }
  g.fillText(`${(x1 - x0).toFixed(0)} s`, width - pad.r - 30, height - 4);
  let legend = pad.l;
  for (const s of series) {
    g.strokeStyle = s.colour; g.lineWidth = 1.6; g.beginPath();
    let started = false;
    for (const [x, y] of s.points) {
      if (y === null || !Number.isFinite(y)) { started = false; continue; }
      if (started) g.lineTo(X(x), Y(y)); else { g.moveTo(X(x), Y(y)); started = true; }
    }
    g.stroke();
    g.fillStyle = s.colour; g.fillText(s.label, legend, 11); legend += g.measureText(s.label).width + 16;
  }
}
