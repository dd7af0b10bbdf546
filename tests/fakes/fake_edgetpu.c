/*
 * FAKE libedgetpu for tests. Not an Edge TPU driver: it runs nothing.
 *
 * It implements the two ABIs EdgeFleet uses to talk to libedgetpu, so that the agent's delegate
 * paths can be tested on machines without an Edge TPU:
 *   - the TFLite external delegate plugin ABI (tflite_plugin_create_delegate and
 *     tflite_plugin_destroy_delegate), which LiteRT's load_delegate() calls with the options
 *     dict, e.g. {"device": "usb:0"};
 *   - edgetpu_version(), which the hardware probe asks.
 * The delegate it returns claims no nodes of the graph, so a CPU model runs on the CPU kernels
 * and an Edge TPU-compiled model fails, as it must, on its edgetpu-custom-op.
 *
 * Behaviour is steered by environment variables (read at each call):
 *   FAKE_EDGETPU_DEVICES  comma-separated devices that "exist" (e.g. "usb:0,pci:0"); creating a
 *                         delegate for any other device fails (returns NULL, like libedgetpu)
 *   FAKE_EDGETPU_RECORD   a file to which each create/destroy appends one line
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
struct TfLiteContext;

/* Layout of TfLiteDelegate from TFLite's C API (tensorflow/lite/core/c/common.h). */
typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(struct TfLiteContext *context, struct TfLiteDelegate *delegate);
  TfLiteStatus (*CopyFromBufferHandle)(struct TfLiteContext *, struct TfLiteDelegate *, int,
                                       void *);
  TfLiteStatus (*CopyToBufferHandle)(struct TfLiteContext *, struct TfLiteDelegate *, int,
                                     void *);
  void (*FreeBufferHandle)(struct TfLiteContext *, struct TfLiteDelegate *, int *);
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;

static void record(const char *what, const char *device) {
  const char *path = getenv("FAKE_EDGETPU_RECORD");
  if (path == NULL) return;
  FILE *f = fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s device=%s\n", what, device);
  fclose(f);
}

static int device_exists(const char *device) {
  const char *list = getenv("FAKE_EDGETPU_DEVICES");
  size_t len = strlen(device);
  if (list == NULL || len == 0) return 0;
  for (const char *p = list; *p != '\0';) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n == len && strncmp(p, device, n) == 0) return 1;
    if (end == NULL) break;
    p = end + 1;
  }
  return 0;
}

static TfLiteStatus prepare(struct TfLiteContext *context, TfLiteDelegate *delegate) {
  (void)context;
  (void)delegate;
  return kTfLiteOk; /* claims nothing */
}

const char *edgetpu_version(void) { return "FAKE libedgetpu (EdgeFleet test double)"; }

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t count,
                                              void (*report_error)(const char *)) {
  const char *device = "";
  for (size_t i = 0; i < count; i++) {
    if (strcmp(keys[i], "device") == 0) device = values[i];
  }
  if (!device_exists(device)) {
    record("refused", device);
    if (report_error != NULL) report_error("fake edgetpu: no such device");
    return NULL;
  }
  TfLiteDelegate *delegate = calloc(1, sizeof *delegate);
  if (delegate == NULL) return NULL;
  delegate->Prepare = prepare;
  record("create", device);
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) {
  record("destroy", "");
  free(delegate);
}
