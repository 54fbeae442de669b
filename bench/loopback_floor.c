/* The kernel's share of a UDP packet on loopback, on this machine (no Python, no crypto).
 *
 *   cc -O2 -o /tmp/loopback_floor bench/loopback_floor.c && /tmp/loopback_floor 0 && /tmp/loopback_floor 1
 *
 * A child process waits in epoll on 300 UDP sockets and recv()s; the parent sends one 110-byte
 * datagram to each socket every 20 ms for 10 s (mode 0: send() on 300 connected sockets; mode 1:
 * one sendmmsg() of 300 datagrams per tick). Prints CPU microseconds per packet on each side.
 * Measured on the 2-core VM (November 2026): send 6.1 us (5.6 of it sys), sendmmsg 5.9 us,
 * epoll + recv 3.7 us. So every packet crossing loopback costs ~10 us of CPU before any
 * user-space work: ~1 ms per call-second at 50 packets/s each way.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#define N 300
#define ROUNDS 500
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_utime.tv_usec/1e6+r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
static double sys_(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); /* 0 send per socket, 1 sendmmsg one socket */
  int rs[N]; struct sockaddr_in ra[N];
  for(int i=0;i<N;i++){rs[i]=socket(AF_INET,SOCK_DGRAM,0);struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};bind(rs[i],(void*)&a,sizeof a);socklen_t l=sizeof ra[i];getsockname(rs[i],(void*)&ra[i],&l);}
  int pfd[2]; pipe(pfd);
  pid_t pid=fork();
  if(pid==0){ int ep=epoll_create1(0); for(int i=0;i<N;i++){struct epoll_event e={.events=EPOLLIN,.data.fd=rs[i]};epoll_ctl(ep,EPOLL_CTL_ADD,rs[i],&e);}
    long got=0; double c0=cpu(); char buf[2048]; struct epoll_event ev[1024];
    while(got<(long)N*ROUNDS*99/100){int n=epoll_wait(ep,ev,1024,1000); if(n<=0)break; for(int k=0;k<n;k++){if(recv(ev[k].data.fd,buf,2048,MSG_DONTWAIT)>0)got++;}}
    printf("receiver: %.2f us cpu/packet (%ld)\n",(cpu()-c0)/got*1e6,got); return 0;}
  int ss[N]; for(int i=0;i<N;i++){ss[i]=socket(AF_INET,SOCK_DGRAM,0);connect(ss[i],(void*)&ra[i],sizeof ra[i]);}
  int one=socket(AF_INET,SOCK_DGRAM,0);
  char pkt[110]; memset(pkt,0x80,110);
  struct mmsghdr mm[N]; struct iovec iov[N];
  for(int i=0;i<N;i++){iov[i].iov_base=pkt;iov[i].iov_len=110;memset(&mm[i],0,sizeof mm[i]);mm[i].msg_hdr.msg_iov=&iov[i];mm[i].msg_hdr.msg_iovlen=1;mm[i].msg_hdr.msg_name=&ra[i];mm[i].msg_hdr.msg_namelen=sizeof ra[i];}
  usleep(200000);
  double c0=cpu(), s0=sys_();
  for(int r=0;r<ROUNDS;r++){
    if(mode==0){for(int i=0;i<N;i++)send(ss[i],pkt,110,MSG_DONTWAIT);}
    else {sendmmsg(one,mm,N,0);}
    usleep(20000);
  }
  double c1=cpu(), s1=sys_();
  printf("sender mode %d: %.2f us cpu/packet (sys %.2f)\n",mode,(c1-c0)/((double)N*ROUNDS)*1e6,(s1-s0)/((double)N*ROUNDS)*1e6);
  waitpid(pid,0,0);
}
