/* table.c: a connection's channel table, channel id -> queue, an open
 * addressing hash table.  Every function here but xn_table_free runs with
 * the connection's table_lock held (connection.h). */

#include "connection.h"

#include <stdlib.h>

#define TOMBSTONE ((xn_queue *)1)

typedef struct xn_slot {
    int32_t id;
    xn_queue *queue; /* NULL: free, TOMBSTONE: deleted */
} table_slot;

static size_t
slot_index(int32_t id, size_t mask)
{
    return ((uint32_t)id * 2654435761u) & mask;
}

/* Returns the queue registered for id, or NULL. Caller holds table_lock. */
xn_queue *
xn_table_lookup(xn_connection *c, int32_t id)
{
    if (c->slots == NULL) {
        return NULL;
    }
    size_t mask = c->capacity - 1;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL) {
            return NULL;
        }
        if (s->queue != TOMBSTONE && s->id == id) {
            return s->queue;
        }
    }
}

/* Rebuild the table with room for more entries. Returns 0 or -1 (no memory). */
static int
table_grow(xn_connection *c)
{
    size_t newcap = c->capacity ? c->capacity * 2 : 16;
    while (c->used * 4 >= newcap) {
        newcap *= 2;
    }
    table_slot *slots = calloc(newcap, sizeof(table_slot));
    if (slots == NULL) {
        return -1;
    }
    for (size_t i = 0; i < c->capacity; i++) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL || s->queue == TOMBSTONE) {
            continue;
        }
        size_t j = slot_index(s->id, newcap - 1);
        while (slots[j].queue != NULL) {
            j = (j + 1) & (newcap - 1);
        }
        slots[j] = *s;
    }
    free(c->slots);
    c->slots = slots;
    c->capacity = newcap;
    c->filled = c->used;
    return 0;
}

/* Register q under id, replacing an earlier one. Caller holds table_lock.
 * Returns 0 or -1 (no memory). */
int
xn_table_insert(xn_connection *c, int32_t id, xn_queue *q)
{
    if ((c->filled + 1) * 2 > c->capacity && table_grow(c) < 0) {
        return -1;
    }
    size_t mask = c->capacity - 1;
    table_slot *free_slot = NULL;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL) {
            if (free_slot == NULL) {
                free_slot = s;
                c->filled++;
            }
            break;
        }
        if (s->queue == TOMBSTONE) {
            if (free_slot == NULL) {
                free_slot = s;
            }
        }
        else if (s->id == id) {
            s->queue = q;
            return 0;
        }
    }
    free_slot->id = id;
    free_slot->queue = q;
    c->used++;
    return 0;
}

/* Remove id's entry if it is q (q NULL: whatever it is). Caller holds table_lock. */
void
xn_table_remove(xn_connection *c, int32_t id, xn_queue *q)
{
    if (c->slots == NULL) {
        return;
    }
    size_t mask = c->capacity - 1;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL) {
            return;
        }
        if (s->queue != TOMBSTONE && s->id == id) {
            if (q == NULL || s->queue == q) {
                s->queue = TOMBSTONE;
                c->used--;
            }
            return;
        }
    }
}

/* Called by a dying queue: drop it from the table (GIL held, no IO). */
void
xn_connection_forget_queue(xn_connection *c, xn_queue *q)
{
    pthread_mutex_lock(&c->table_lock);
    xn_table_remove(c, q->channelid, q);
    pthread_mutex_unlock(&c->table_lock);
}

void
xn_table_free(xn_connection *c)
{
    free(c->slots);
    c->slots = NULL;
    c->capacity = c->used = c->filled = 0;
}
