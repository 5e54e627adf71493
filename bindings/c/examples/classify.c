/*
 * classify: print the top-3 classes of image files with a compiled model.
 *
 *   cc classify.c $(pkg-config --cflags --libs cifar) -o classify
 *   ./classify model.cifar cat.png dog.jpg
 */
#include <cifar.h>

#include <stdio.h>
#include <stdlib.h>

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  *len = buf ? fread(buf, 1, (size_t)n, f) : 0;
  fclose(f);
  return buf;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.cifar IMAGE...\n", argv[0]);
    return 2;
  }
  if (cifar_abi_version() != CIFAR_ABI_VERSION) {
    fprintf(stderr, "libcifar ABI %u, this program was built for %d\n", cifar_abi_version(), CIFAR_ABI_VERSION);
    return 2;
  }
  cifar_model *model = NULL;
  cifar_status st = cifar_model_open(argv[1], NULL, &model);
  if (st != CIFAR_STATUS_OK) {
    fprintf(stderr, "%s: %s: %s\n", argv[1], cifar_status_str(st), cifar_last_error());
    return 1;
  }
  const char *device = NULL, *reason = NULL;
  cifar_model_device(model, &device, &reason);
  fprintf(stderr, "libcifar %s, device %s (%s)\n", cifar_version(), device, reason);
  cifar_session *session = NULL;
  if (cifar_session_new(model, &session) != CIFAR_STATUS_OK) {
    fprintf(stderr, "session: %s\n", cifar_last_error());
    cifar_model_free(model);
    return 1;
  }
  int failed = 0;
  for (int i = 2; i < argc; i++) {
    size_t len = 0;
    unsigned char *data = read_file(argv[i], &len);
    cifar_prediction top[3];
    st = data ? cifar_classify_encoded(session, data, len, 3, top, 3) : CIFAR_STATUS_IO;
    if (st != CIFAR_STATUS_OK) {
      fprintf(stderr, "%s: %s: %s\n", argv[i], cifar_status_str(st), data ? cifar_last_error() : "cannot read");
      failed++;
    } else {
      printf("%s:", argv[i]);
      for (int k = 0; k < 3; k++) {
        const char *label = "?";
        cifar_model_label(model, top[k].class_index, &label);
        printf(" %s %.3f", label, top[k].probability);
      }
      printf("\n");
    }
    free(data);
  }
  cifar_session_free(session);
  cifar_model_free(model);
  return failed ? 1 : 0;
}
