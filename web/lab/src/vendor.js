// The libraries the lab's page uses, bundled once: window.monaco and window.echarts.
import * as monaco from "monaco-editor/esm/vs/editor/edcore.main.js";
import "monaco-editor/esm/vs/basic-languages/python/python.contribution.js";
import * as echarts from "echarts/core";
import { LineChart, RadarChart, HeatmapChart } from "echarts/charts";
import { GridComponent, TooltipComponent, LegendComponent, VisualMapComponent, RadarComponent, TitleComponent }
  from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([LineChart, RadarChart, HeatmapChart, GridComponent, TooltipComponent, LegendComponent,
  VisualMapComponent, RadarComponent, TitleComponent, CanvasRenderer]);
// Monaco's worker is a file of this server (no blob:, no CDN)
self.MonacoEnvironment = { getWorkerUrl: () => "static/editor.worker.js" };
window.monaco = monaco;
window.echarts = echarts;
