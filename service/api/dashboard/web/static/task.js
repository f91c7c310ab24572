// Draws a task's reliability diagram from the JSON the server rendered into the page.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("task-data").textContent);
  Chart.defaults.font.family = "system-ui, sans-serif";
  Chart.defaults.animation = false;
  new Chart(document.getElementById("chart-reliability"), {
    data: {
      labels: data.labels,
      datasets: [
        { type: "bar", label: "Agreement with the strong model", data: data.agreement, backgroundColor: "#3858e9",
          yAxisID: "share" },
        { type: "line", label: "Mean cheap confidence (perfect calibration)", data: data.confidence,
          borderColor: "#e8893a", backgroundColor: "#e8893a", yAxisID: "share", spanGaps: true },
        { type: "line", label: "Requests", data: data.requests, borderColor: "#c5cad6", backgroundColor: "#c5cad6",
          yAxisID: "count", borderDash: [4, 4] },
      ],
    },
    options: { scales: {
      share: { position: "left", min: 0, max: 1, title: { display: true, text: "share" } },
      count: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } },
      x: { title: { display: true, text: "cheap model's confidence" } },
    } },
  });
})();
