import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

declare const process: { env: Record<string, string | undefined> };

// The robopt service (`robopt serve`); the page only talks to /api and /socket.io.
// ROBOPT_SERVICE_URL points the dev server and `vite preview` at another address.
const SERVICE = process.env.ROBOPT_SERVICE_URL ?? 'http://127.0.0.1:8000';
const proxy = {
  '/api': { target: SERVICE, changeOrigin: true },
  '/socket.io': { target: SERVICE, changeOrigin: true, ws: true },
};

export default defineConfig({
  plugins: [react()],
  server: { port: 3000, strictPort: true, proxy },
  preview: { port: 3000, strictPort: true, proxy },
  build: { outDir: 'dist', chunkSizeWarningLimit: 2000 },
  test: {
    environment: 'jsdom',
    setupFiles: ['./src/tests/setup.ts'],
    include: ['src/tests/**/*.test.{ts,tsx}'],
    css: false,
    testTimeout: 20000,
  },
});
