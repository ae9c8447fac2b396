/* Runs systemd's own helpers, the ones its service manager reads a notify datagram with, from
 * systemd's private library (libsystemd-shared-NNN.so, linked by NotifySystemdDifferentialTests):
 * each input line is "KIND HEX"; KIND 0 prints safe_atou64's value (safe_atollu_full, base 0) or
 * "nil"; 1 prints the lines of strv_split_newlines (each as hex, then "|") or "ERR"; 2 prints 1 or 0
 * for utf8_is_valid. Usage: systemd-parse-probe INPUT OUTPUT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int safe_atollu_full(const char *s, unsigned base, unsigned long long *ret);
int strv_split_newlines_full(char ***ret, const char *s, int flags);
const char *utf8_is_valid_n(const char *s, size_t n);

int main(int argc, char **argv) {
        if (argc != 3)
                return 2;
        FILE *in = fopen(argv[1], "r"), *out = fopen(argv[2], "w");
        if (!in || !out)
                return 2;
        char line[1024], text[512];
        while (fgets(line, sizeof line, in)) {
                size_t n = strcspn(line + 2, "\n") / 2;
                for (size_t i = 0; i < n; i++) {
                        unsigned v;
                        sscanf(line + 2 + 2 * i, "%2x", &v);
                        text[i] = (char) v;
                }
                text[n] = 0;
                if (line[0] == '0') {
                        unsigned long long v;
                        if (safe_atollu_full(text, 0, &v) < 0)
                                fprintf(out, "nil\n");
                        else
                                fprintf(out, "%llu\n", v);
                } else if (line[0] == '1') {
                        char **l = NULL;
                        if (strv_split_newlines_full(&l, text, 0) < 0) {
                                fprintf(out, "ERR\n");
                                continue;
                        }
                        for (char **p = l; *p; p++) {
                                for (char *c = *p; *c; c++)
                                        fprintf(out, "%02x", (unsigned char) *c);
                                fprintf(out, "|");
                        }
                        fprintf(out, "\n");
                } else
                        fprintf(out, "%d\n", utf8_is_valid_n(text, n) != NULL);
        }
        return fclose(out) == 0 ? 0 : 2;
}
